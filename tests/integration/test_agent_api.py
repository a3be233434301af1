"""The agent's REST API in-process (``aiohttp_client``), standalone, against the S3 fixture."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from agent.config import Settings
from agent.face.app import MANAGER, create_app
from locality.agentclient import AgentError, wait_ready
from locality.identity import model_ref
from tests.fixtures.models import synthetic_model
from tests.fixtures.polling import eventually
from tests.fixtures.s3server import S3Server

TOKEN = "s3cr3t-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Client = TestClient[Any, Any]


@pytest.fixture()
def small_model(s3_server: S3Server, tmp_path: Path) -> str:
    """A fresh two-shard model (2 x 256 KiB + config.json) under a unique prefix."""
    local = synthetic_model(tmp_path / "src", shards=2, shard_bytes=256 << 10)
    prefix = f"api/{uuid.uuid4().hex[:8]}/tiny-model"
    s3_server.upload_dir(local, "models", prefix)
    return f"s3://models/{prefix}"


@pytest.fixture()
async def client(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path, s3_env: dict[str, str]
) -> Client:
    settings = Settings(cache_dir=tmp_path / "cache", token=TOKEN, quota_bytes=1 << 30).validate()
    return await aiohttp_client(create_app(settings))


def is_dir(path: str) -> bool:
    return Path(path).is_dir()


async def until_state(
    client: Client, model_id: str, states: set[str], within: float = 30.0
) -> dict[str, Any]:
    last: dict[str, Any] = {}

    async def body() -> dict[str, Any] | None:
        last.clear()
        last.update(await (await client.get(f"/v1/models/{model_id}")).json())
        return dict(last) if last.get("state") in states else None

    what = lambda: f"model {model_id} state in {states}: {last}"  # noqa: E731
    return await eventually(body, within, what, interval=0.05)


async def test_post_fetches_and_get_shows_path(client: Client, small_model: str) -> None:
    resp = await client.post("/v1/models", json={"uri": small_model}, headers=AUTH)
    assert resp.status == 202
    body = await resp.json()
    ref = model_ref(small_model)
    assert body["id"] == ref.id and body["label"] == ref.label_key
    assert body["state"] in {"queued", "fetching"}
    view = await until_state(client, ref.id, {"ready", "failed"})
    assert view["state"] == "ready", view
    assert view["error"] is None and view["bytes_done"] == view["bytes_total"] > 0
    path = Path(view["path"])
    assert path.name == ref.id and (path / "config.json").is_file()
    listing = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in listing] == [ref.id]
    # Idempotent: a second POST of the same model (spelled differently) answers ready at once.
    spelled = small_model.replace("s3://models/", "S3://MODELS//") + "/"
    again = await client.post("/v1/models", json={"uri": spelled}, headers=AUTH)
    assert again.status == 202
    assert (await again.json()) == await (await client.get(f"/v1/models/{ref.id}")).json()  # one shape


async def test_concurrent_posts_start_one_fetch(client: Client, small_model: str) -> None:
    responses = await asyncio.gather(
        *(client.post("/v1/models", json={"uri": small_model}, headers=AUTH) for _ in range(8))
    )
    bodies = [await r.json() for r in responses]
    assert {r.status for r in responses} == {202}
    assert len({b["id"] for b in bodies}) == 1
    await until_state(client, bodies[0]["id"], {"ready"})
    metrics = await (await client.get("/metrics")).text()
    assert 'model_locality_agent_fetch_duration_seconds_count{outcome="ready"} 1.0' in metrics
    total = (await (await client.get(f"/v1/models/{bodies[0]['id']}")).json())["bytes_total"]
    assert f'model_locality_agent_fetched_bytes_total{{scheme="s3"}} {float(total)}' in metrics


async def test_client_disconnect_does_not_cancel_fetch(client: Client, small_model: str) -> None:
    url = str(client.make_url("/v1/models"))
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"uri": small_model}, headers=AUTH) as resp,
    ):
        assert resp.status == 202
        # the connection is closed with the session here, while the fetch is queued or running
    view = await until_state(client, model_ref(small_model).id, {"ready", "failed"})
    assert view["state"] == "ready"


AUTH_CASES = {
    "no header": {},
    "wrong token": {"Authorization": "Bearer nope"},
    "wrong scheme": {"Authorization": f"Basic {TOKEN}"},
    "empty bearer": {"Authorization": "Bearer "},
}


@pytest.mark.parametrize("headers", list(AUTH_CASES.values()), ids=list(AUTH_CASES))
async def test_mutations_need_the_token(client: Client, headers: dict[str, str]) -> None:
    resp = await client.post("/v1/models", json={"uri": "s3://models/x"}, headers=headers)
    assert resp.status == 401
    assert "error" in await resp.json()
    resp = await client.delete("/v1/models/0123456789abcdef", headers=headers)
    assert resp.status == 401
    assert client.app is not None
    assert client.app[MANAGER].views() == []


BAD_BODIES = {
    "not json": (b"{nope", 400),
    "not an object": (b'["s3://models/x"]', 400),
    "unknown field": (b'{"uri": "s3://models/x", "force": true}', 400),
    "missing uri": (b"{}", 400),
    "uri not a string": (b'{"uri": 42}', 400),
    "bad scheme": (b'{"uri": "ftp://models/x"}', 400),
    "dot-dot": (b'{"uri": "s3://models/a/../b"}', 400),
    "too large": (b'{"uri": "' + b"a" * (70 << 10) + b'"}', 413),
}


@pytest.mark.parametrize(("body", "status"), list(BAD_BODIES.values()), ids=list(BAD_BODIES))
async def test_bad_post_bodies(client: Client, body: bytes, status: int) -> None:
    resp = await client.post("/v1/models", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status == status
    assert isinstance((await resp.json())["error"], str)


ID_CASES = {
    "GET unknown": ("GET", "0123456789abcdef", 404),
    "DELETE unknown": ("DELETE", "0123456789abcdef", 404),
    "GET malformed": ("GET", "not-an-id", 400),
    "GET upper-case hex": ("GET", "0123456789ABCDEF", 400),
    "DELETE malformed": ("DELETE", "xyz", 400),
}


@pytest.mark.parametrize(("method", "model_id", "status"), list(ID_CASES.values()), ids=list(ID_CASES))
async def test_bad_ids(client: Client, method: str, model_id: str, status: int) -> None:
    resp = await client.request(method, f"/v1/models/{model_id}", headers=AUTH)
    assert resp.status == status
    assert "error" in await resp.json()


async def test_delete_pinned_is_409_then_removed(client: Client, small_model: str) -> None:
    ref = model_ref(small_model)
    await client.post("/v1/models", json={"uri": small_model}, headers=AUTH)
    view = await until_state(client, ref.id, {"ready"})
    assert client.app is not None
    cache = client.app[MANAGER].cache
    await asyncio.to_thread(cache.pin, ref.id, "manual:test")
    resp = await client.delete(f"/v1/models/{ref.id}", headers=AUTH)
    assert resp.status == 409
    assert "manual:test" in (await resp.json())["error"]
    assert is_dir(view["path"])
    await asyncio.to_thread(cache.unpin, ref.id, "manual:test")
    resp = await client.delete(f"/v1/models/{ref.id}", headers=AUTH)
    assert resp.status == 202
    assert (await resp.json())["id"] == ref.id
    assert (await client.get(f"/v1/models/{ref.id}")).status == 404
    assert not is_dir(view["path"])


async def test_failed_fetch_keeps_error_and_post_retries(client: Client, s3_server: S3Server) -> None:
    s3_server.create_bucket("models")
    uri = f"s3://models/missing/{uuid.uuid4().hex[:8]}"
    ref = model_ref(uri)
    await client.post("/v1/models", json={"uri": uri}, headers=AUTH)
    view = await until_state(client, ref.id, {"failed", "ready"})
    assert view["state"] == "failed" and view["error"]
    retry = await client.post("/v1/models", json={"uri": uri}, headers=AUTH)
    assert (await retry.json())["state"] in {"queued", "fetching"}
    await until_state(client, ref.id, {"failed"})


async def test_probes_and_metrics(client: Client, small_model: str) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["mode"] == "standalone"
    await client.post("/v1/models", json={"uri": small_model}, headers=AUTH)
    await until_state(client, model_ref(small_model).id, {"ready"})
    await client.get("/v1/models/zz")
    text = await (await client.get("/metrics")).text()
    for name in (
        "model_locality_agent_fetched_bytes_total",
        "model_locality_agent_fetch_duration_seconds_bucket",
        'model_locality_agent_models{state="ready"} 1.0',
        "model_locality_agent_cache_used_bytes",
        "model_locality_agent_cache_quota_bytes",
        "model_locality_agent_evictions_total",
        "model_locality_agent_verification_failures_total",
        'model_locality_agent_http_requests_total{code="202",route="POST /v1/models"} 1.0',
        'model_locality_agent_http_requests_total{code="400",route="GET /v1/models/{id}"} 1.0',
        "model_locality_agent_http_request_duration_seconds_bucket",
    ):
        assert name in text, name
    view = await (await client.get(f"/v1/models/{model_ref(small_model).id}")).json()
    assert sample(text, "model_locality_agent_cache_used_bytes") == view["bytes_total"]
    assert sample(text, "model_locality_agent_cache_quota_bytes") == 1 << 30


def sample(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                return float(s.value)
    raise AssertionError(f"no sample {name}")


async def test_wait_ready_client(client: Client, small_model: str) -> None:
    base = str(client.make_url("")).rstrip("/")
    path = await wait_ready(base, small_model, token=TOKEN, timeout=30, poll=0.05)
    assert path.name == model_ref(small_model).id and (path / "config.json").is_file()
    with pytest.raises(AgentError, match="401"):
        await wait_ready(base, small_model, token="wrong", timeout=5, poll=0.05)
    with pytest.raises(AgentError, match="failed"):
        await wait_ready(base, "s3://models/missing/nothing-here", token=TOKEN, timeout=30, poll=0.05)


async def test_wait_ready_times_out_when_no_agent() -> None:
    from tests.fixtures.ports import free_port

    with pytest.raises(AgentError, match="timed out") as info:
        await wait_ready(
            f"http://127.0.0.1:{free_port()}", "s3://models/x", token=None, timeout=0.5, poll=0.1
        )
    assert info.value.timed_out


async def test_eviction_is_counted_and_listed(
    aiohttp_client: Callable[..., Awaitable[Client]],
    tmp_path: Path,
    s3_env: dict[str, str],
    s3_server: S3Server,
) -> None:
    uris = []
    for name in ("first-model", "second-model"):
        local = synthetic_model(tmp_path / name, shards=2, shard_bytes=256 << 10)
        prefix = f"evict/{uuid.uuid4().hex[:8]}/{name}"
        s3_server.upload_dir(local, "models", prefix)
        uris.append(f"s3://models/{prefix}")
    # Room for one model only: the second fetch must evict the first (least recently used).
    settings = Settings(cache_dir=tmp_path / "cache", token=TOKEN, quota_bytes=800 << 10).validate()
    client = await aiohttp_client(create_app(settings))
    first, second = (model_ref(u) for u in uris)
    await client.post("/v1/models", json={"uri": first.uri}, headers=AUTH)
    await until_state(client, first.id, {"ready"})
    await client.post("/v1/models", json={"uri": second.uri}, headers=AUTH)
    await until_state(client, second.id, {"ready"})
    assert (await client.get(f"/v1/models/{first.id}")).status == 404
    listing = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in listing] == [second.id]

    async def evicted_once() -> bool:
        text = await (await client.get("/metrics")).text()
        return sample(text, "model_locality_agent_evictions_total") == 1

    await eventually(evicted_once, 5, "one eviction counted", interval=0.05)
