"""manifests/crd-modeldistributions.yaml on the real API server: what its schema admits and
refuses (spec and status), what it leaves undefaulted, and the columns `kubectl get` prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiException

from tests.fixtures.kustomize import load_all
from tests.fixtures.realkube import RealKube

MD = "/apis/model-locality.io/v1alpha1/modeldistributions"
EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "modeldistribution.yaml"
MERGE = "application/merge-patch+json"
CONDITION = {
    "type": "Ready",
    "status": "False",
    "lastTransitionTime": "2026-01-01T00:00:00Z",
    "reason": "Fetching",
    "message": "0/2 ready",
}


@pytest.fixture()
def crd(real_kube_crd: RealKube) -> RealKube:
    real_kube_crd.delete_all("modeldistributions", "model-locality.io/v1alpha1")
    return real_kube_crd


def md(name: str, spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "model-locality.io/v1alpha1",
        "kind": "ModelDistribution",
        "metadata": {"name": name},
        "spec": spec,
    }


def refused(call: Any, *args: Any, code: int = 422, **kwargs: Any) -> str:
    with pytest.raises(ApiException) as caught:
        call(*args, **kwargs)
    assert caught.value.status == code, caught.value.body
    return str(caught.value.body)


def test_the_examples_are_admitted(crd: RealKube) -> None:
    names = [o["metadata"]["name"] for o in crd.apply_manifests(load_all(EXAMPLES.read_text()))]
    assert sorted(names) == ["all-minilm-l6-v2", "bge-small-en-v1-5"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        pytest.param({}, "spec.uri", id="missing-uri"),
        pytest.param({"uri": ""}, "spec.uri", id="empty-uri"),
        pytest.param({"uri": "no-scheme"}, "spec.uri", id="uri-without-scheme"),
        pytest.param({"uri": "s3://b/m", "replicas": 0}, "spec.replicas", id="replicas-zero"),
        pytest.param({"uri": "s3://b/m", "replicas": -1}, "spec.replicas", id="replicas-negative"),
        pytest.param({"uri": "s3://b/m", "replicas": "some"}, "spec.replicas", id="replicas-other-word"),
        pytest.param({"uri": "s3://b/m", "nodeSelector": {"a": 1}}, "spec.nodeSelector", id="selector-value"),
        pytest.param({"uri": "s3://b/m", "revision": ""}, "spec.revision", id="revision-empty"),
        pytest.param({"uri": "s3://b/m", "revision": "a b"}, "spec.revision", id="revision-space"),
    ],
)
def test_schema_refuses_bad_specs(crd: RealKube, spec: dict[str, Any], field: str) -> None:
    assert field in refused(crd.request, "POST", MD, md("bad", spec))


def test_a_revision_is_admitted_as_written(crd: RealKube) -> None:
    spec = {"uri": "hf://org/model", "revision": "9a7b3c1d2e4f"}
    made = crd.request("POST", MD, md("pinned", spec))
    assert made["spec"] == spec  # no default, nothing pruned


def test_missing_spec_is_refused(crd: RealKube) -> None:
    body = md("bad", None)
    del body["spec"]
    assert "spec" in refused(crd.request, "POST", MD, body)


def test_unknown_field_is_refused_under_strict_validation_and_pruned_otherwise(crd: RealKube) -> None:
    body = md("typo", {"uri": "s3://b/m", "replica": 2})
    strict = f"{MD}?fieldValidation=Strict"
    answer = refused(crd.request, "POST", strict, body, code=400)  # strict decoding: BadRequest
    assert "unknown field" in answer and "spec.replica" in answer
    created = crd.request("POST", f"{MD}?fieldValidation=Ignore", body)
    assert created["spec"] == {"uri": "s3://b/m"}  # pruned: no preserve-unknown-fields anywhere


def test_replicas_is_not_defaulted_by_the_server(crd: RealKube) -> None:
    """ "all" when omitted is the extender's reading; the stored object has no replicas."""
    assert crd.request("POST", MD, md("plain", {"uri": "s3://b/m"}))["spec"] == {"uri": "s3://b/m"}


def test_status_schema(crd: RealKube) -> None:
    crd.request("POST", MD, md("d", {"uri": "s3://b/m", "replicas": 2}))
    good = {
        "status": {
            "modelId": "0123456789abcdef",
            "targets": ["n1"],
            "desired": 2,
            "ready": 0,
            "conditions": [CONDITION],
        }
    }
    assert crd.request("PATCH", f"{MD}/d/status", good, content_type=MERGE)["status"]["desired"] == 2
    for bad, field in (
        ({"ready": -1}, "status.ready"),
        ({"targets": ["n1", "n1"]}, "status.targets"),  # a set
        ({"conditions": [{**CONDITION, "reason": "not a reason!"}]}, "status.conditions[0].reason"),
        ({"conditions": [{**CONDITION, "status": "Maybe"}]}, "status.conditions[0].status"),
        ({"conditions": [{"type": "Ready", "status": "True"}]}, "status.conditions[0].reason"),
    ):
        assert field in refused(crd.request, "PATCH", f"{MD}/d/status", {"status": bad}, content_type=MERGE)


def test_printer_columns(crd: RealKube) -> None:
    crd.request("POST", MD, md("d", {"uri": "s3://b/m", "replicas": "all"}))
    crd.request("PATCH", f"{MD}/d/status", {"status": {"ready": 1, "desired": 3}}, content_type=MERGE)
    with crd.client() as api:
        method, url, headers, _body, _ = api.param_serialize(
            method="GET",
            resource_path=MD,
            header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
            auth_settings=["BearerToken"],
        )
        table = json.loads(api.call_api(method, url, header_params=headers).read())
    columns = [(c["name"], c["priority"]) for c in table["columnDefinitions"]]
    assert columns == [
        ("Name", 0), ("Model", 0), ("Replicas", 0), ("Desired", 0), ("Ready", 0), ("Cold-TTR", 0), ("Age", 0)
    ]  # fmt: skip
    assert table["rows"][0]["cells"][:5] == ["d", "s3://b/m", "all", 3, 1]
