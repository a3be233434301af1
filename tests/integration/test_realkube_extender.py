"""The extender on the real API server as its own ServiceAccount (rendered RBAC): the node cache
follows the watch, the ModelDistribution store round-trips through the real CRD, and every
status the status writer sends passes the CRD's schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.extender import (
    AUTH,
    A,
    Client,
    Factory,
    extender_apps,
    models_annotation,
    scores,
)
from tests.fixtures.polling import eventually
from tests.fixtures.realkube import RealKube
from tests.fixtures.realkube_manifests import NAMESPACE, apply_access, kubeconfig_file

MD = "/apis/model-locality.io/v1alpha1/modeldistributions"


@pytest.fixture(scope="module")
def extender_kubeconfig(real_kube: RealKube, tmp_path_factory: pytest.TempPathFactory) -> Path:
    apply_access(real_kube)
    token = real_kube.token_for(NAMESPACE, "model-locality-extender")
    return kubeconfig_file(real_kube, tmp_path_factory.mktemp("extender"), token, "extender")


@pytest.fixture()
def real(real_kube: RealKube, extender_kubeconfig: Path) -> RealKube:
    """The shared server with no Nodes and no distributions left by earlier tests."""
    real_kube.delete_all("nodes")
    real_kube.delete_all("modeldistributions", "model-locality.io/v1alpha1")
    return real_kube


@pytest.fixture()
async def extender(
    real: RealKube, extender_kubeconfig: Path, aiohttp_client: Client
) -> AsyncIterator[Factory]:
    async with extender_apps(extender_kubeconfig, aiohttp_client, request_timeout=5.0) as start:
        yield start


def patch_node(real: RealKube, name: str, labels: dict[str, str], annotations: dict[str, str]) -> None:
    body = {"metadata": {"labels": labels, "annotations": annotations}}
    real.request("PATCH", f"/api/v1/nodes/{name}", body, content_type="application/merge-patch+json")


async def test_node_cache_follows_the_watch(real: RealKube, extender: Any) -> None:
    real.create_gpu_node("warm", {A.label_key: "ready"}, models_annotation(True))
    real.create_gpu_node("cold")
    client = await extender()
    assert await scores(client, ["cold", "warm"]) == {"cold": 0, "warm": 10}
    patch_node(real, "cold", {A.label_key: "ready"}, models_annotation(True))

    async def cold_warmed() -> bool:
        return (await scores(client, ["cold"]))["cold"] == 10

    await eventually(cold_warmed, interval=0.1)
    real.request("DELETE", "/api/v1/nodes/warm")

    async def warm_gone() -> bool:
        text = await (await client.get("/metrics")).text()
        return "model_locality_extender_node_cache_nodes 1.0" in text

    await eventually(warm_gone, interval=0.1)


async def test_distribution_round_trip_with_schema_valid_status(real: RealKube, extender: Any) -> None:
    for i in range(3):
        real.create_gpu_node(f"gpu-{i}", {"pool": "a"})
    client = await extender()
    body = {"uri": A.uri, "nodeSelector": {"pool": "a"}, "replicas": 2}
    resp = await client.post("/v1/distributions", json=body, headers=AUTH)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    name, targets = created["name"], created["targets"]
    stored = real.request("GET", f"{MD}/{name}")
    assert stored["spec"] == {"uri": A.uri, "nodeSelector": {"pool": "a"}, "replicas": 2}

    def status() -> dict[str, Any]:
        found: dict[str, Any] = real.request("GET", f"{MD}/{name}").get("status") or {}
        return found

    await eventually(
        interval=0.1, check=lambda: status().get("targets") == targets and status().get("desired") == 2
    )
    assert status()["conditions"][0]["reason"] == "Fetching"  # accepted by the CRD's schema
    patch_node(real, targets[1], {A.label_key: "ready"}, models_annotation(True, 123))
    await eventually(interval=0.1, check=lambda: status().get("ready") == 1)
    one = await (await client.get(f"/v1/distributions/{name}", headers=AUTH)).json()
    assert one["nodes"][targets[1]] == {"state": "ready", "bytes": 123}
    assert (await client.delete(f"/v1/distributions/{name}", headers=AUTH)).status == 204
    assert real.request("GET", MD)["items"] == []


async def test_applied_distribution_without_replicas_means_all(real: RealKube, extender: Any) -> None:
    real.create_gpu_node("gpu-0")
    await extender()
    obj = {
        "apiVersion": "model-locality.io/v1alpha1",
        "kind": "ModelDistribution",
        "metadata": {"name": "everywhere"},
        "spec": {"uri": A.uri},
    }
    real.apply_manifests([obj])
    assert "replicas" not in real.request("GET", f"{MD}/everywhere")["spec"]  # no server default

    def targets() -> list[str]:
        return list((real.request("GET", f"{MD}/everywhere").get("status") or {}).get("targets") or [])

    await eventually(interval=0.1, check=lambda: targets() == ["gpu-0"])
    real.create_gpu_node("gpu-1")
    await eventually(interval=0.1, check=lambda: targets() == ["gpu-0", "gpu-1"])


async def test_invalid_applied_spec_is_reported_in_a_schema_valid_condition(
    real: RealKube, extender: Any
) -> None:
    await extender()
    obj = {
        "apiVersion": "model-locality.io/v1alpha1",
        "kind": "ModelDistribution",
        "metadata": {"name": "broken"},
        "spec": {"uri": "ftp://nope/x"},  # the CRD checks the shape only; the extender the scheme
    }
    real.apply_manifests([obj])

    def reason() -> str | None:
        conditions = (real.request("GET", f"{MD}/broken").get("status") or {}).get("conditions") or []
        return conditions[0]["reason"] if conditions else None

    await eventually(interval=0.1, check=lambda: reason() == "InvalidSpec")
