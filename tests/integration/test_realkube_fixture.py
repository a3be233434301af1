"""The real control-plane fixture itself: Ready GPU nodes, ServiceAccount tokens that RBAC
governs, create-or-replace of manifests."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.fixtures.realkube import GPU, NOT_READY_TAINT, RealKube


def test_gpu_node_is_ready_untainted_and_has_gpus(real_kube: RealKube) -> None:
    node = real_kube.create_gpu_node("fixture-gpu-1", labels={"pool": "gpu"}, gpus=4)
    try:
        assert node["metadata"]["labels"]["pool"] == "gpu"
        assert not [t for t in node["spec"].get("taints") or [] if t["key"] == NOT_READY_TAINT]
        assert node["status"]["allocatable"][GPU] == "4"
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"
    finally:
        real_kube.request("DELETE", "/api/v1/nodes/fixture-gpu-1")


def test_service_account_token_is_authenticated_and_rbac_denies_by_default(real_kube: RealKube) -> None:
    real_kube.create_service_account("fixture-ns", "nobody")
    token = real_kube.token_for("fixture-ns", "nobody", audiences=[real_kube.issuer])
    configuration = client.Configuration(host=real_kube.url, api_key={"authorization": f"Bearer {token}"})
    configuration.ssl_ca_cert = str(real_kube.ca_file)
    with client.ApiClient(configuration) as api:
        review = client.AuthenticationV1Api(api).create_self_subject_review(
            client.V1SelfSubjectReview(metadata=client.V1ObjectMeta())
        )
        assert review.status.user_info.username == "system:serviceaccount:fixture-ns:nobody"
        with pytest.raises(client.ApiException) as caught:
            client.CoreV1Api(api).list_node()
        assert caught.value.status == 403


def test_wrong_token_is_401(real_kube: RealKube) -> None:
    configuration = client.Configuration(host=real_kube.url, api_key={"authorization": "Bearer nope"})
    configuration.ssl_ca_cert = str(real_kube.ca_file)
    with client.ApiClient(configuration) as api, pytest.raises(client.ApiException) as caught:
        client.CoreV1Api(api).list_node()
    assert caught.value.status == 401


def test_apply_manifests_creates_then_replaces(real_kube: RealKube, real_kube_client: Any) -> None:
    cm: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "fixture-cm", "namespace": "fixture-ns"},
        "data": {"a": "1"},
    }
    real_kube.create_namespace("fixture-ns", {"team": "ml"})
    real_kube.apply_manifests([cm])
    cm["data"] = {"a": "2"}
    real_kube.apply_manifests([cm])
    read = client.CoreV1Api(real_kube_client).read_namespaced_config_map("fixture-cm", "fixture-ns")
    assert read.data == {"a": "2"}
    assert client.CoreV1Api(real_kube_client).read_namespace("fixture-ns").metadata.labels["team"] == "ml"


def test_service_account_keeps_its_namespace_labels(real_kube: RealKube, real_kube_client: Any) -> None:
    real_kube.create_namespace("fixture-sa-ns", {"model-locality.io/injection": "enabled"})
    real_kube.create_service_account("fixture-sa-ns", "default")
    labels = client.CoreV1Api(real_kube_client).read_namespace("fixture-sa-ns").metadata.labels
    assert labels["model-locality.io/injection"] == "enabled"
    real_kube.create_service_account("fixture-sa-new", "default")  # a missing namespace is made
    assert client.CoreV1Api(real_kube_client).read_namespaced_service_account("default", "fixture-sa-new")
