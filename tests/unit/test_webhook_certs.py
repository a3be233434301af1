"""The webhook's CA and serving certificate (generation, renewal) and its AdmissionReview answers."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from cryptography import x509

from locality import errors
from scheduler_extender.certs import (
    CA_DAYS,
    SERVING_DAYS,
    BadBundle,
    Bundle,
    _build_serving,
    due,
    new_bundle,
    next_check,
    renewed,
)
from scheduler_extender.injection import Install
from scheduler_extender.webhook import review_response, warning_event

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
HOSTS = ("model-locality-extender.model-locality.svc", "127.0.0.1")


def cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_new_bundle_is_a_ca_and_a_serving_cert_for_the_hosts() -> None:
    bundle = new_bundle(HOSTS, T0)
    ca, serving = cert(bundle.ca_crt), cert(bundle.tls_crt)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert serving.issuer == ca.subject
    serving.verify_directly_issued_by(ca)
    san = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOSTS[0]]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert (serving.not_valid_after_utc - T0).days == SERVING_DAYS
    assert (ca.not_valid_after_utc - T0).days == CA_DAYS


@pytest.mark.parametrize(
    ("days", "what"),
    [
        pytest.param(1, None, id="fresh: nothing to do"),
        pytest.param(59, None, id="just before 2/3 of the serving life"),
        pytest.param(61, "serving", id="past 2/3 of the serving life"),
        pytest.param(400, "serving", id="expired serving certificate"),
        pytest.param(int(CA_DAYS * 2 / 3) + 2, "ca", id="past 2/3 of the CA life"),
    ],
)
def test_renewal(days: int, what: str | None) -> None:
    bundle = new_bundle(HOSTS, T0)
    now = T0 + dt.timedelta(days=days)
    successor = renewed(bundle, HOSTS, now)
    if what is None:
        assert successor is None
        return
    assert successor is not None
    if what == "serving":
        assert successor.ca_crt == bundle.ca_crt and successor.ca_key == bundle.ca_key
        assert successor.tls_crt != bundle.tls_crt and not successor.previous_ca
    else:
        assert successor.ca_crt != bundle.ca_crt and successor.previous_ca == bundle.ca_crt
        assert successor.ca_bundle(now) == successor.ca_crt + bundle.ca_crt  # old CA still trusted
        assert successor.ca_bundle(T0 + dt.timedelta(days=CA_DAYS + 1)) == successor.ca_crt
    cert(successor.tls_crt).verify_directly_issued_by(cert(successor.ca_crt))
    assert renewed(successor, HOSTS, now) is None


def test_new_host_means_new_serving_cert() -> None:
    bundle = new_bundle(HOSTS[:1], T0)
    successor = renewed(bundle, HOSTS, T0)
    assert successor is not None and successor.ca_crt == bundle.ca_crt


def test_serving_cert_never_outlives_its_ca() -> None:
    bundle = new_bundle(HOSTS, T0)
    late = cert(bundle.ca_crt).not_valid_after_utc - dt.timedelta(days=10)
    crt, _ = _build_serving(cert(bundle.ca_crt), _ca_key(bundle), HOSTS, late)
    assert cert(crt).not_valid_after_utc == cert(bundle.ca_crt).not_valid_after_utc


def _ca_key(bundle: Bundle) -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(bundle.ca_key, password=None)


def test_due_and_next_check() -> None:
    bundle = new_bundle(HOSTS, T0)
    assert not due(cert(bundle.tls_crt), T0)
    seconds = next_check(bundle, T0, most=10**9)
    assert 59 * 86400 < seconds < 61 * 86400
    assert next_check(bundle, T0, most=3600) == 3600


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({}, id="empty"),
        pytest.param({"ca.crt": b"x", "ca.key": b"x", "tls.crt": b"x"}, id="no tls.key"),
    ],
)
def test_missing_keys(data: dict[str, bytes]) -> None:
    with pytest.raises(BadBundle):
        Bundle.from_data(data)


def test_garbage_pem() -> None:
    with pytest.raises(BadBundle):
        renewed(Bundle(b"junk", b"junk", b"junk", b"junk"), HOSTS, T0)


def test_bundle_round_trip() -> None:
    bundle = new_bundle(HOSTS, T0)
    assert Bundle.from_data(bundle.as_data()) == bundle


def test_junk_previous_ca_is_dropped_not_fatal() -> None:
    """A damaged ``ca-previous.crt`` in the Secret must not break every sync forever."""
    bundle = new_bundle(HOSTS, T0)
    loaded = Bundle.from_data({**bundle.as_data(), "ca-previous.crt": b"not a certificate"})
    assert loaded.previous_ca == b""
    assert loaded.ca_bundle(T0) == bundle.ca_crt


# --- AdmissionReview answers


def review(obj: dict[str, Any], *, operation: str = "CREATE", kind: str = "Pod") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "operation": operation,
            "namespace": "serving",
            "object": obj,
        },
    }


def annotated(models: str) -> dict[str, Any]:
    return {
        "metadata": {"generateName": "web-", "annotations": {"model-locality.io/models": models}},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
    }


def test_review_with_patch() -> None:
    answer, reason = review_response(review(annotated("s3://models/a")), Install(), {})
    response = answer["response"]
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert response["uid"] == "u-1" and response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    assert {"op": "add", "path": "/spec/schedulerName", "value": "model-locality-scheduler"} in ops
    assert reason == "" and "warnings" not in response


@pytest.mark.parametrize(
    "request_review",
    [
        pytest.param(review(annotated("s3://models/a"), operation="UPDATE"), id="update"),
        pytest.param(review(annotated("s3://models/a"), kind="Deployment"), id="not a pod"),
        pytest.param(review({"metadata": {}, "spec": {}}), id="unannotated"),
    ],
)
def test_review_without_patch(request_review: dict[str, Any]) -> None:
    answer, reason = review_response(request_review, Install(), {})
    assert answer["response"] == {"uid": "u-1", "allowed": True} and reason == ""


def test_bad_annotation_is_allowed_with_a_warning_and_an_event() -> None:
    req = review(annotated("ftp://nope/x"))
    answer, reason = review_response(req, Install(), {})
    response = answer["response"]
    assert response["allowed"] is True and "patch" not in response
    assert "unsupported scheme" in response["warnings"][0] and reason == response["warnings"][0]
    event = warning_event(req["request"], reason, 0.0)
    assert event is not None
    namespace, body = event
    assert namespace == "serving" and body["type"] == "Warning"
    assert body["involvedObject"] == {
        "kind": "Pod",
        "apiVersion": "v1",
        "namespace": "serving",
        "name": "web-",
    }


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([], id="not an object"),
        pytest.param({"request": None}, id="no request"),
        pytest.param({"request": {"uid": ""}}, id="no uid"),
    ],
)
def test_not_a_review(body: object) -> None:
    with pytest.raises(errors.Invalid):
        review_response(body, Install(), {})


def test_junk_kind_or_object_is_answered_not_a_crash() -> None:
    junk_kind = review(annotated("s3://models/a"))
    junk_kind["request"]["kind"] = "Pod"
    answer, reason = review_response(junk_kind, Install(), {})
    assert answer["response"] == {"uid": "u-1", "allowed": True} and reason == ""
    junk_object = review(annotated("s3://models/a"))
    junk_object["request"]["object"] = ["not", "a", "pod"]
    answer, reason = review_response(junk_object, Install(), {})
    assert answer["response"] == {"uid": "u-1", "allowed": True} and reason == ""
    assert warning_event({**junk_object["request"], "object": "junk"}, "r", 0.0) is not None
