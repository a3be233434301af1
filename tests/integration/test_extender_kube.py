"""The extender against the fake Kubernetes API: node cache through the watch (dropped watches
included), and the distribution REST round trip through the ModelDistribution custom resource."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from locality.contract import LOCALITY_ANNOTATION, MODELS_ANNOTATION
from locality.kube import Kube
from tests.fixtures.extender import (
    AUTH,
    A,
    Client,
    Factory,
    extender_apps,
    models_annotation,
    scores,
)
from tests.fixtures.fakekube.server import FakeKube
from tests.fixtures.polling import eventually

GPU = {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": "8"}


@pytest.fixture()
async def extender(fake_kube: FakeKube, aiohttp_client: Client) -> AsyncIterator[Factory]:
    """Start extender apps (each with its own Kube connection) against the fake API."""
    async with extender_apps(fake_kube.kubeconfig_path, aiohttp_client) as start:
        yield start


async def test_node_cache_follows_the_watch(fake_kube: FakeKube, extender: Factory) -> None:
    fake_kube.add_node("warm", {A.label_key: "ready"}, models_annotation(True), allocatable=GPU)
    fake_kube.add_node("cold", allocatable=GPU)
    client = await extender()
    assert await scores(client, ["cold", "warm"]) == {"cold": 0, "warm": 10}

    kube = Kube.connect(str(fake_kube.kubeconfig_path))
    assert kube is not None
    try:  # an agent finishing a fetch writes its own Node, as in production
        await kube.patch_node_metadata(
            "cold", labels={A.label_key: "ready"}, annotations=models_annotation(True)
        )

        async def cold_warmed() -> bool:
            return (await scores(client, ["cold"]))["cold"] == 10

        await eventually(cold_warmed)
        fake_kube.delete("node", "warm")

        async def warm_gone() -> bool:
            text = await (await client.get("/metrics")).text()
            return "model_locality_extender_node_cache_nodes 1.0" in text

        await eventually(warm_gone)
    finally:
        await kube.close()


async def test_node_cache_recovers_from_dropped_watch(fake_kube: FakeKube, extender: Factory) -> None:
    fake_kube.add_node("n1", allocatable=GPU)
    client = await extender()

    async def watching() -> bool:
        return fake_kube.open_watches("node") > 0

    await eventually(watching)
    # The next watch attempts fail too, so the change below can only arrive through a re-list.
    fake_kube.fail_next(3, path="/nodes", watch=True, status=500)
    assert fake_kube.drop_watches() >= 1
    node = fake_kube.get("node", "n1")
    node["metadata"]["labels"][A.label_key] = "ready"
    fake_kube.update("node", node)
    fake_kube.add_node("n2", {A.label_key: "ready"}, allocatable=GPU)

    async def converged() -> bool:
        return await scores(client, ["n1", "n2"]) == {"n1": 10, "n2": 10}

    await eventually(converged)
    await eventually(watching)  # and it watches again afterwards


async def test_filter_required_through_cache(fake_kube: FakeKube, extender: Factory) -> None:
    fake_kube.add_node("warm", {A.label_key: "ready"}, allocatable=GPU)
    fake_kube.add_node("cold", allocatable=GPU)
    client = await extender()
    body = {
        "Pod": {"metadata": {"annotations": {MODELS_ANNOTATION: A.uri, LOCALITY_ANNOTATION: "required"}}},
        "Nodes": None,
        "NodeNames": ["cold", "warm"],
    }
    reply = await (await client.post("/filter", json=body)).json()
    assert reply["NodeNames"] == ["warm"] and list(reply["FailedNodes"]) == ["cold"]


async def get_json(client: TestClient[Any, Any], path: str, status: int = 200) -> Any:
    resp = await client.get(path, headers=AUTH)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_distribution_round_trip_and_restart(fake_kube: FakeKube, extender: Factory) -> None:
    for i in range(4):
        fake_kube.add_node(f"gpu-{i}", {"pool": "a"}, allocatable=GPU)
    fake_kube.add_node("gpu-b", {"pool": "b"}, allocatable=GPU)
    fake_kube.add_node("cordoned", {"pool": "a"}, unschedulable=True, allocatable=GPU)
    client = await extender()

    body = {"uri": A.uri + "/", "nodeSelector": {"pool": "a"}, "replicas": 2}
    assert (await client.post("/v1/distributions", json=body)).status == 401
    resp = await client.post("/v1/distributions", json=body, headers=AUTH)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    name = created["name"]
    assert name.startswith(f"{A.slug}-") and len(name) == len(A.slug) + 9
    assert (created["uri"], created["modelId"], created["label"]) == (A.uri, A.id, A.label_key)
    assert created["replicas"] == 2 and created["nodeSelector"] == {"pool": "a"}
    targets = created["targets"]
    assert len(targets) == 2 and set(targets) <= {"gpu-0", "gpu-1", "gpu-2", "gpu-3"}
    assert created["nodes"] == {t: {"state": "queued", "bytes": None} for t in targets}

    stored = fake_kube.get("distribution", name)
    assert stored["spec"] == {"uri": A.uri, "nodeSelector": {"pool": "a"}, "replicas": 2}

    async def status_written() -> bool:
        status = fake_kube.get("distribution", name).get("status") or {}
        return status.get("targets") == targets and status.get("desired") == 2

    await eventually(status_written)
    status = fake_kube.get("distribution", name)["status"]
    assert status["modelId"] == A.id and status["ready"] == 0
    assert status["conditions"][0]["reason"] == "Fetching"

    # One target's agent reports progress, the other finishes: per-node state comes from the Nodes.
    fetching, done = targets
    fake_kube.update("node", _with(fake_kube.get("node", fetching), {}, models_annotation(False, 123)))
    fake_kube.update(
        "node", _with(fake_kube.get("node", done), {A.label_key: "ready"}, models_annotation(True, 123))
    )

    async def states_seen() -> bool:
        one = await get_json(client, f"/v1/distributions/{name}")
        return one["nodes"] == {
            fetching: {"state": "fetching", "bytes": 123},
            done: {"state": "ready", "bytes": 123},
        }

    await eventually(states_seen)

    async def ready_counted() -> bool:
        return (fake_kube.get("distribution", name).get("status") or {}).get("ready") == 1

    await eventually(ready_counted)

    listed = await get_json(client, "/v1/distributions")
    assert [d["name"] for d in listed["items"]] == [name]

    # Restart: the first extender stops (its watches end), a new one sees the same distribution,
    # the same targets, and writes nothing new since nothing changed.
    await client.close()
    writes_before = len(fake_kube.writes())
    restarted = await extender()
    again = await get_json(restarted, f"/v1/distributions/{name}")
    assert again["targets"] == targets and again["ready"] == 1

    async def reconciled() -> bool:  # its reconciler has passed over the distribution
        text = await (await restarted.get("/metrics")).text()
        return 'model_locality_extender_distributions{state="progressing"} 1.0' in text

    await eventually(reconciled)
    assert len(fake_kube.writes()) == writes_before  # same answer: no status rewrite

    assert (await restarted.delete(f"/v1/distributions/{name}")).status == 401
    assert (await restarted.delete(f"/v1/distributions/{name}", headers=AUTH)).status == 204
    assert (await get_json(restarted, f"/v1/distributions/{name}", 404))["error"]
    assert (await restarted.delete(f"/v1/distributions/{name}", headers=AUTH)).status == 404


def _with(node: dict[str, Any], labels: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    node["metadata"].setdefault("labels", {}).update(labels)
    node["metadata"].setdefault("annotations", {}).update(annotations)
    return node


async def test_kubectl_applied_distribution_all_follows_new_nodes(
    fake_kube: FakeKube, extender: Factory
) -> None:
    fake_kube.add_node("gpu-0", allocatable=GPU)
    fake_kube.add_node("cpu-0")  # no GPUs: not eligible while GPU nodes exist
    client = await extender()
    obj = {
        "apiVersion": "model-locality.io/v1alpha1",
        "kind": "ModelDistribution",
        "metadata": {"name": "everywhere"},
        "spec": {"uri": A.uri},  # replicas defaults to "all"
    }
    fake_kube.create("distribution", obj)

    async def targets_are(expected: list[str]) -> bool:
        status = fake_kube.get("distribution", "everywhere").get("status") or {}
        return status.get("targets") == expected and status.get("desired") == len(expected)

    await eventually(lambda: targets_are(["gpu-0"]))
    fake_kube.add_node("gpu-1", allocatable=GPU)
    await eventually(lambda: targets_are(["gpu-0", "gpu-1"]))
    one = await get_json(client, "/v1/distributions/everywhere")
    assert one["replicas"] == "all" and one["targets"] == ["gpu-0", "gpu-1"]


async def test_invalid_applied_spec_reported_in_status(fake_kube: FakeKube, extender: Factory) -> None:
    client = await extender()
    fake_kube.create("distribution", {"metadata": {"name": "broken"}, "spec": {"uri": "ftp://nope/x"}})

    async def reported() -> bool:
        status = fake_kube.get("distribution", "broken").get("status") or {}
        return bool(status.get("conditions")) and status["conditions"][0]["reason"] == "InvalidSpec"

    await eventually(reported)
    one = await get_json(client, "/v1/distributions/broken")
    assert "unsupported scheme" in one["error"]


BAD_POSTS = [
    ("unknown field", {"uri": A.uri, "replica": 2}),
    ("missing uri", {"replicas": 2}),
    ("bad uri", {"uri": "ftp://x/y"}),
    ("replicas zero", {"uri": A.uri, "replicas": 0}),
    ("replicas negative", {"uri": A.uri, "replicas": -1}),
    ("replicas float", {"uri": A.uri, "replicas": 1.5}),
    ("replicas bool", {"uri": A.uri, "replicas": True}),
    ("replicas other word", {"uri": A.uri, "replicas": "some"}),
    ("selector not an object", {"uri": A.uri, "nodeSelector": ["a"]}),
    ("selector value not a string", {"uri": A.uri, "nodeSelector": {"a": 1}}),
    ("selector bad key", {"uri": A.uri, "nodeSelector": {"bad key!": "x"}}),
    ("not an object", [A.uri]),
    ("revision with a space", {"uri": A.uri, "revision": "main branch"}),
]


async def test_distribution_post_carries_a_revision(fake_kube: FakeKube, extender: Factory) -> None:
    client = await extender()
    body = {"uri": A.uri, "replicas": 1, "revision": "9a7b3c1d2e4f"}
    resp = await client.post("/v1/distributions", json=body, headers=AUTH)
    assert resp.status == 201, await resp.text()
    [obj] = fake_kube.objects("distribution")
    assert obj["spec"]["revision"] == "9a7b3c1d2e4f"


@pytest.mark.parametrize(("name", "body"), BAD_POSTS, ids=[n for n, _ in BAD_POSTS])
async def test_distribution_validation(
    name: str, body: object, fake_kube: FakeKube, extender: Factory
) -> None:
    client = await extender()
    resp = await client.post("/v1/distributions", json=body, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"]
    assert fake_kube.objects("distribution") == []


async def test_distribution_api_down_is_503_not_a_trace(fake_kube: FakeKube, extender: Factory) -> None:
    client = await extender()
    fake_kube.fail_next(1, method="POST", path="modeldistributions", status=500)
    resp = await client.post("/v1/distributions", json={"uri": A.uri}, headers=AUTH)
    assert resp.status == 503
    assert "Kubernetes API" in (await resp.json())["error"]
    assert (await get_json(client, "/v1/distributions/bad_name!", 400))["error"]
