"""The extender app fed kube-scheduler's real captured bodies, in both node modes.

Bodies are the ones recorded from kube-scheduler (tests/fixtures/kube_scheduler/); each test adds
the pod annotations and node labels it needs, then checks the reply's exact shape and order.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from locality.contract import LOCALITY_ANNOTATION, MODELS_ANNOTATION
from locality.identity import model_ref
from scheduler_extender.app import Deps, create_app
from scheduler_extender.config import Settings
from scheduler_extender.nodecache import NodeCache

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kube_scheduler"
A = model_ref("s3://models/org/llama-3-8b")
B = model_ref("s3://models/org/embedder-small")
GB = 10**9
FILTER_KEYS = ["Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"]

Client = Callable[..., Awaitable[TestClient[Any, Any]]]


def captured(verb: str, cache_capable: bool) -> dict[str, Any]:
    name = f"{verb}-nodeCacheCapable-{'true' if cache_capable else 'false'}.json"
    body: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return body


def with_pod_models(body: dict[str, Any], *uris: str, locality: str | None = None) -> dict[str, Any]:
    body = copy.deepcopy(body)
    annotations = body["Pod"]["metadata"].setdefault("annotations", {})
    annotations[MODELS_ANNOTATION] = ",".join(uris)
    if locality:
        annotations[LOCALITY_ANNOTATION] = locality
    return body


# node-1: A and B ready; node-3: A ready; node-4: B fetching; node-2, node-5: nothing.
READY = {"node-1": [A, B], "node-3": [A]}
SIZES = {A.id: 16 * GB, B.id: GB}


def decorate(node: dict[str, Any]) -> dict[str, Any]:
    """Give a Node object the labels and annotation an agent would write."""
    node = copy.deepcopy(node)
    name = node["metadata"]["name"]
    meta = node["metadata"]
    refs = READY.get(name, [])
    meta.setdefault("labels", {}).update({r.label_key: "ready" for r in refs})
    models = {r.id: {"uri": r.uri, "bytes": SIZES[r.id], "state": "ready"} for r in refs}
    if name == "node-4":
        models[B.id] = {"uri": B.uri, "bytes": SIZES[B.id], "state": "fetching"}
    meta.setdefault("annotations", {})[MODELS_ANNOTATION] = json.dumps(models)
    return node


def full_nodes_body(verb: str, *uris: str, locality: str | None = None) -> dict[str, Any]:
    body = with_pod_models(captured(verb, False), *uris, locality=locality)
    body["Nodes"]["items"] = [decorate(n) for n in body["Nodes"]["items"]]
    return body


def cache_of_captured_nodes() -> NodeCache:
    nodes = captured("filter", False)["Nodes"]["items"]
    cache = NodeCache()
    cache.replace(decorate(n) for n in nodes)
    return cache


@pytest.fixture()
async def standalone(aiohttp_client: Client) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(Settings()))


@pytest.fixture()
async def cached(aiohttp_client: Client) -> TestClient[Any, Any]:
    """Names-only mode against a node cache holding the five captured nodes."""
    return await aiohttp_client(create_app(Settings(), Deps(node_cache=cache_of_captured_nodes())))


async def post(client: TestClient[Any, Any], path: str, body: object) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
    return resp.status, await resp.json()


def assert_prioritize_shape(reply: Any, names: list[str]) -> dict[str, int]:
    """Every entry is {Host, Score} for a host asked about, in the order asked, scored 1..10; a host
    left out scores 0 (kube-scheduler adds nothing for it, as for a 0)."""
    assert isinstance(reply, list)
    assert [list(e) for e in reply] == [["Host", "Score"]] * len(reply)
    hosts = [e["Host"] for e in reply]
    assert hosts == [n for n in names if n in hosts]
    assert all(type(e["Score"]) is int and 0 < e["Score"] <= 10 for e in reply)
    return {n: next((e["Score"] for e in reply if e["Host"] == n), 0) for n in names}


@pytest.mark.parametrize("mode", ["cached", "full"])
async def test_prioritize_ranks_warm_nodes_first(mode: str, cached: TestClient[Any, Any]) -> None:
    if mode == "cached":
        body = with_pod_models(captured("prioritize", True), A.uri, B.uri)
    else:
        body = full_nodes_body("prioritize", A.uri, B.uri)
    names = body["NodeNames"] or [n["metadata"]["name"] for n in body["Nodes"]["items"]]
    status, reply = await post(cached, "/prioritize", body)
    assert status == 200
    scores = assert_prioritize_shape(reply, names)
    assert scores["node-1"] == 10  # everything ready
    assert 0 < scores["node-3"] < 10  # the big model ready, the small one not
    assert scores["node-2"] == scores["node-4"] == scores["node-5"] == 0  # fetching is not ready


async def test_full_nodes_mode_works_standalone(standalone: TestClient[Any, Any]) -> None:
    status, reply = await post(standalone, "/prioritize", full_nodes_body("prioritize", A.uri))
    assert status == 200
    scores = assert_prioritize_shape(reply, ["node-1", "node-3", "node-4", "node-5", "node-2"])
    assert scores == {"node-1": 10, "node-3": 10, "node-4": 0, "node-5": 0, "node-2": 0}


async def test_names_only_standalone_scores_zero(standalone: TestClient[Any, Any]) -> None:
    body = with_pod_models(captured("prioritize", True), A.uri)
    status, reply = await post(standalone, "/prioritize", body)
    assert status == 200
    assert reply == []  # every host scores 0: none is listed


async def test_pod_without_annotation_scores_zero(cached: TestClient[Any, Any]) -> None:
    body = captured("prioritize", True)
    status, reply = await post(cached, "/prioritize", body)
    assert status == 200
    assert reply == []


async def test_filter_required_names_mode(cached: TestClient[Any, Any]) -> None:
    body = with_pod_models(captured("filter", True), A.uri, locality="required")
    status, reply = await post(cached, "/filter", body)
    assert status == 200
    assert list(reply) == FILTER_KEYS
    assert reply["Nodes"] is None
    assert reply["NodeNames"] == ["node-3", "node-1"]  # input order kept: node-2,3,4,5,1
    assert set(reply["FailedNodes"]) == {"node-2", "node-4", "node-5"}
    assert all(A.uri in msg for msg in reply["FailedNodes"].values())
    assert reply["FailedAndUnresolvableNodes"] == {}
    assert reply["Error"] == ""


async def test_filter_required_full_mode_returns_same_node_objects(cached: TestClient[Any, Any]) -> None:
    body = full_nodes_body("filter", A.uri, B.uri, locality="required")
    status, reply = await post(cached, "/filter", body)
    assert status == 200
    assert list(reply) == FILTER_KEYS
    assert reply["NodeNames"] is None
    assert reply["Nodes"]["metadata"] == {}
    assert reply["Nodes"]["items"] == [n for n in body["Nodes"]["items"] if n["metadata"]["name"] == "node-1"]
    assert set(reply["FailedNodes"]) == {"node-2", "node-3", "node-4", "node-5"}
    assert B.uri in reply["FailedNodes"]["node-3"] and A.uri not in reply["FailedNodes"]["node-3"]


@pytest.mark.parametrize("mode", ["cached", "full"])
async def test_filter_preferred_passes_everything(mode: str, cached: TestClient[Any, Any]) -> None:
    body = (
        with_pod_models(captured("filter", True), A.uri)
        if mode == "cached"
        else full_nodes_body("filter", A.uri)
    )
    status, reply = await post(cached, "/filter", body)
    assert status == 200
    assert reply["FailedNodes"] == {}
    if mode == "cached":
        assert reply["NodeNames"] == body["NodeNames"]
    else:
        assert reply["Nodes"]["items"] == body["Nodes"]["items"]


async def test_filter_rejecting_all_answers_empty_list_not_null(cached: TestClient[Any, Any]) -> None:
    body = with_pod_models(captured("filter", True), "s3://models/never/fetched", locality="required")
    status, reply = await post(cached, "/filter", body)
    assert status == 200
    assert reply["NodeNames"] == []
    assert set(reply["FailedNodes"]) == set(body["NodeNames"])


async def test_unknown_node_names_hold_nothing(cached: TestClient[Any, Any]) -> None:
    body = with_pod_models(captured("filter", True), A.uri, locality="required")
    body["NodeNames"] = ["node-1", "brand-new-node"]
    status, reply = await post(cached, "/filter", body)
    assert status == 200
    assert reply["NodeNames"] == ["node-1"] and list(reply["FailedNodes"]) == ["brand-new-node"]
    status, reply = await post(cached, "/prioritize", body)
    assert reply == [{"Host": "node-1", "Score": 10}]  # brand-new-node scores 0: left out


async def test_garbage_pod_annotation_scores_zero(cached: TestClient[Any, Any]) -> None:
    body = with_pod_models(captured("prioritize", True), "definitely not a uri, ftp://x/y")
    status, reply = await post(cached, "/prioritize", body)
    assert status == 200
    assert reply == []
    metrics = await (await cached.get("/metrics")).text()
    assert 'model_locality_extender_bad_annotations_total{object="pod"} 1.0' in metrics


async def test_garbage_node_annotation_in_full_mode_scores_zero(cached: TestClient[Any, Any]) -> None:
    body = full_nodes_body("prioritize", A.uri)
    for item in body["Nodes"]["items"]:
        item["metadata"]["annotations"][MODELS_ANNOTATION] = "{garbage"
        item["metadata"]["labels"] = {}
    status, reply = await post(cached, "/prioritize", body)
    assert status == 200 and reply == []
    metrics = await (await cached.get("/metrics")).text()
    assert 'model_locality_extender_bad_annotations_total{object="node"} 5.0' in metrics


async def test_required_with_garbage_uri_fails_every_node(cached: TestClient[Any, Any]) -> None:
    body = with_pod_models(captured("filter", True), "ftp://x/y", A.uri, locality="required")
    status, reply = await post(cached, "/filter", body)
    assert status == 200
    assert reply["NodeNames"] == []
    assert all("ftp://x/y" in m for m in reply["FailedNodes"].values())


async def test_lower_case_top_level_keys_accepted(cached: TestClient[Any, Any]) -> None:
    body = with_pod_models(captured("prioritize", True), A.uri)
    lowered = {"pod": body["Pod"], "nodes": None, "nodenames": body["NodeNames"]}
    status, reply = await post(cached, "/prioritize", lowered)
    assert status == 200 and reply  # the nodes holding A are listed, as for PascalCase keys
    assert reply == (await post(cached, "/prioritize", body))[1]


BAD_BODIES = [
    ("malformed json", b'{"Pod": {'),
    ("not utf-8", b"\xff\xfe{}"),
    ("array body", b"[]"),
    ("missing Pod", {"Nodes": None, "NodeNames": ["a"]}),
    ("Pod not an object", {"Pod": "x", "Nodes": None, "NodeNames": ["a"]}),
    ("annotations not an object", {"Pod": {"metadata": {"annotations": []}}, "NodeNames": ["a"]}),
    ("neither node list", {"Pod": {}, "Nodes": None, "NodeNames": None}),
    ("both node lists", {"Pod": {}, "Nodes": {"items": []}, "NodeNames": ["a"]}),
    ("NodeNames not strings", {"Pod": {}, "Nodes": None, "NodeNames": [1, 2]}),
    ("NodeNames not a list", {"Pod": {}, "Nodes": None, "NodeNames": "node-1"}),
    ("Nodes items not objects", {"Pod": {}, "Nodes": {"items": ["node-1"]}, "NodeNames": None}),
    ("node without a name", {"Pod": {}, "Nodes": {"items": [{"metadata": {}}]}, "NodeNames": None}),
    ("deeply nested", b"[" * 100000 + b"]" * 100000),
]


@pytest.mark.parametrize(("name", "body"), BAD_BODIES, ids=[n for n, _ in BAD_BODIES])
@pytest.mark.parametrize("verb", ["filter", "prioritize"])
async def test_bad_input_is_400_and_service_keeps_serving(
    name: str, body: object, verb: str, cached: TestClient[Any, Any]
) -> None:
    status, reply = await post(cached, f"/{verb}", body)
    assert status == 400, reply
    assert isinstance(reply["error"], str) and reply["error"]
    status, _ = await post(cached, f"/{verb}", with_pod_models(captured(verb, True), A.uri))
    assert status == 200


async def test_enormous_body_is_413(aiohttp_client: Client) -> None:
    client = await aiohttp_client(create_app(Settings(max_body_bytes=4096)))
    body = {"Pod": {}, "Nodes": None, "NodeNames": [f"node-{i}" for i in range(2000)]}
    status, reply = await post(client, "/prioritize", body)
    assert status == 413 and "4096" in reply["error"]

    async def chunks() -> Any:  # no Content-Length: the cap holds while streaming
        for _ in range(10):
            yield b" " * 1024

    resp = await client.post("/prioritize", data=chunks())
    assert resp.status == 413
    status, _ = await post(client, "/prioritize", {"Pod": {}, "Nodes": None, "NodeNames": ["a"]})
    assert status == 200


async def test_url_prefix_routes(aiohttp_client: Client) -> None:
    client = await aiohttp_client(create_app(Settings(url_prefix="/scheduler")))
    body = {"Pod": {}, "Nodes": None, "NodeNames": ["a"]}
    assert (await post(client, "/scheduler/prioritize", body))[0] == 200
    assert (await post(client, "/scheduler/filter", body))[0] == 200
    status, reply = await post(client, "/prioritize", body)
    assert status == 404 and "error" in reply


async def test_wrong_method_is_json_405(cached: TestClient[Any, Any]) -> None:
    resp = await cached.get("/filter")
    assert resp.status == 405
    assert "error" in await resp.json()


async def test_probes_and_metrics(cached: TestClient[Any, Any], standalone: TestClient[Any, Any]) -> None:
    for client in (cached, standalone):
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 200
    await post(cached, "/prioritize", with_pod_models(captured("prioritize", True), A.uri))
    await post(cached, "/filter", b"{")
    text = await (await cached.get("/metrics")).text()
    assert 'model_locality_extender_requests_total{code="200",verb="prioritize"} 1.0' in text
    assert 'model_locality_extender_requests_total{code="400",verb="filter"} 1.0' in text
    assert 'model_locality_extender_request_duration_seconds_bucket{le="0.005",verb="prioritize"}' in text
    assert "model_locality_extender_node_cache_nodes 5.0" in text
    assert "model_locality_extender_node_cache_age_seconds" in text


async def test_readyz_waits_for_cache_sync(aiohttp_client: Client) -> None:
    cache = NodeCache()
    client = await aiohttp_client(create_app(Settings(), Deps(node_cache=cache)))
    assert (await client.get("/readyz")).status == 503
    cache.replace([])
    assert (await client.get("/readyz")).status == 200


async def test_distributions_standalone_is_a_clear_error(aiohttp_client: Client) -> None:
    client = await aiohttp_client(create_app(Settings(token="t0k3n")))
    anonymous = await client.post("/v1/distributions", json={"uri": A.uri})
    assert anonymous.status == 401  # fail closed: no caller gets past auth, API or not
    auth = {"Authorization": "Bearer t0k3n"}
    resp = await client.post("/v1/distributions", json={"uri": A.uri}, headers=auth)
    assert resp.status == 503
    assert "standalone" in (await resp.json())["error"]


def test_app_is_an_aiohttp_application() -> None:
    assert isinstance(create_app(Settings()), web.Application)
