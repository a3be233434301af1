"""Latest semantics: a changed origin is fetched as a new revision beside the old one, the switch is
atomic, the old directory stays while a pod pins it, then eviction takes it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from agent.config import Settings
from agent.face.app import create_app
from agent.fetch.cache import Cache, FetchFailed
from agent.lifecycle.pins import Pins
from locality.identity import model_ref
from locality.records import Layout, record_for_dir
from tests.fixtures.models import write_safetensors
from tests.fixtures.origin import run_origin
from tests.fixtures.polling import eventually
from tests.fixtures.s3server import S3Server

MiB = 2**20
TOKEN = "t0ken-for-revisions"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Client = TestClient[Any, Any]


def make_cache(root: Path, quota: int = 1 << 30) -> Cache:
    return Cache(Settings(cache_dir=root, chunk_bytes=MiB, concurrency=2, quota_bytes=quota).validate())


async def test_changed_s3_object_switches_and_old_revision_stays_while_pinned(
    s3_server: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    s3_server.put("switch", "m/config.json", b'{"a": 1}')
    s3_server.put("switch", "m/w.bin", b"1" * 4000)
    ref = model_ref("s3://switch/m")
    cache = make_cache(tmp_path / "cache")
    v1 = await cache.fetch(ref)
    old_dir = cache.model_path(ref.id)
    cache.pin(ref.id, "pod:ns/reader")
    cache.pin(ref.id, "distribution:keep")
    assert await cache.refresh(ref) is None  # unchanged origin: nothing fetched
    s3_server.put("switch", "m/w.bin", b"2" * 4000)
    v2 = await cache.refresh(ref)
    assert v2 is not None and v2.revision != v1.revision
    new_dir = cache.model_path(ref.id)
    assert new_dir != old_dir and (new_dir / "w.bin").read_bytes() == b"2" * 4000
    assert (old_dir / "w.bin").read_bytes() == b"1" * 4000  # a running pod's path stays valid
    assert v2.pins == {"pod:ns/reader", "distribution:keep"}
    (old,) = cache.revisions(ref.id)
    assert old.revision == v1.revision and old.pins == {"pod:ns/reader"}  # pod pins only
    assert old.dir_name == old_dir.name and old.id == f"{ref.id}@{(v1.revision or '')[:8]}"
    # A restart keeps both; serving finds each directory's own record.
    again = make_cache(tmp_path / "cache", quota=5000)
    assert {r.id for r in again.scan()} == {ref.id, old.id}
    layout = Layout(tmp_path / "cache")
    assert record_for_dir(layout, old_dir.name).revision == v1.revision  # type: ignore[union-attr]
    assert record_for_dir(layout, new_dir.name).revision == v2.revision  # type: ignore[union-attr]
    assert again.verify(ref.id) == [] and again.verify(old.id) == []
    assert again.gc() == [] and old_dir.is_dir()  # over the quota, but the pod still pins it
    again.unpin(old.id, "pod:ns/reader")
    assert again.gc() == [old.id]  # unused now: the old revision goes first
    assert not old_dir.exists() and (new_dir / "w.bin").is_file()


async def test_changed_http_file_switches_over_rest(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    write_safetensors(tmp_path / "src" / "m.bin", MiB + 3, seed=1)
    settings = Settings(cache_dir=tmp_path / "cache", token=TOKEN, chunk_bytes=MiB).validate()
    client = await aiohttp_client(create_app(settings))
    with run_origin(tmp_path / "src") as origin:
        uri = f"{origin.url}/m.bin"
        first = await until_ready(client, uri)
        old_path, old_rev = Path(first["path"]), first["revision"]
        write_safetensors(tmp_path / "src" / "m.bin", MiB + 5, seed=2)
        resp = await client.post("/v1/models", json={"uri": uri, "refresh": True}, headers=AUTH)
        body = await resp.json()
        assert resp.status == 202 and body["state"] == "ready", body  # served while refreshing
        view = await until(client, model_ref(uri).id, lambda v: v.get("revision") != old_rev)
    assert view["state"] == "ready" and Path(view["path"]) != old_path
    assert size_of(Path(view["path"], "m.bin")) == MiB + 5
    listed = await (await client.get("/v1/models")).json()
    (old,) = [v for v in listed if v["state"] == "superseded"]
    assert old["revision"] == old_rev and Path(old["path"]) == old_path and is_dir(old_path)


async def test_revision_pin_must_match_the_origin(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    write_safetensors(tmp_path / "src" / "m.bin", MiB, seed=1)
    settings = Settings(cache_dir=tmp_path / "cache", token=TOKEN, chunk_bytes=MiB).validate()
    client = await aiohttp_client(create_app(settings))
    with run_origin(tmp_path / "src") as origin:
        uri = f"{origin.url}/m.bin"
        resp = await client.post("/v1/models", json={"uri": uri, "revision": "0123456789"}, headers=AUTH)
        body = await resp.json()
        assert resp.status == 409 and "not the requested 0123456789" in body["error"], body
        ready = await until_ready(client, uri)
        resp = await client.post("/v1/models", json={"uri": uri, "revision": ready["revision"]}, headers=AUTH)
        assert resp.status == 202 and (await resp.json())["state"] == "ready"
        for bad in ({"uri": uri, "revision": "a b"}, {"uri": uri, "refresh": "yes"}):
            resp = await client.post("/v1/models", json=bad, headers=AUTH)
            assert resp.status == 400, await resp.text()
        cache = make_cache(tmp_path / "other")
        with pytest.raises(FetchFailed, match="origin holds revision"):
            await cache.fetch(model_ref(uri), expect="fedcba9876")


async def test_superseded_revision_keeps_pod_pins_until_the_pod_is_gone(
    s3_server: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    s3_server.put("pins", "m/w.bin", b"1" * 100)
    ref = model_ref("s3://pins/m")
    cache = make_cache(tmp_path / "cache")
    await cache.fetch(ref)
    pins = Pins(cache)
    pins.set({ref.id: (ref, frozenset({"pod:ns/old"}))})
    await pins.apply_all()
    s3_server.put("pins", "m/w.bin", b"2" * 100)
    assert await cache.refresh(ref) is not None
    (old,) = cache.revisions(ref.id)
    pins.set({ref.id: (ref, frozenset({"pod:ns/old", "pod:ns/new"}))})
    await pins.apply_all()
    assert cache.get(old.id).pins == {"pod:ns/old"}  # type: ignore[union-attr]
    assert cache.get(ref.id).pins == {"pod:ns/old", "pod:ns/new"}  # type: ignore[union-attr]
    pins.set({ref.id: (ref, frozenset({"pod:ns/new"}))})
    await pins.apply_all()
    assert cache.get(old.id).pins == frozenset()  # type: ignore[union-attr]


async def test_torn_switch_is_undone_at_start(
    s3_server: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    """A crash after the superseded record was written and before the switch: one record per dir."""
    s3_server.put("torn", "m/w.bin", b"1" * 100)
    ref = model_ref("s3://torn/m")
    cache = make_cache(tmp_path / "cache")
    record = await cache.fetch(ref)
    layout = Layout(tmp_path / "cache")
    data = json.loads(layout.record(ref.id).read_text())
    key = f"{ref.id}@{(record.revision or '')[:8]}"
    layout.record(key).write_text(json.dumps({**data, "id": key, "dir": ref.id}))
    again = make_cache(tmp_path / "cache")
    assert [r.id for r in again.scan()] == [ref.id]
    assert not layout.record(key).exists() and (layout.models / ref.id / "w.bin").is_file()


def size_of(path: Path) -> int:
    return path.stat().st_size


def is_dir(path: Path) -> bool:
    return path.is_dir()


async def until_ready(client: Client, uri: str) -> dict[str, Any]:
    resp = await client.post("/v1/models", json={"uri": uri}, headers=AUTH)
    assert resp.status == 202, await resp.text()
    return await until(client, model_ref(uri).id, lambda v: v.get("state") == "ready")


async def until(
    client: Client, model_id: str, done: Callable[[dict[str, Any]], bool], within: float = 30.0
) -> dict[str, Any]:
    last: dict[str, Any] = {}

    async def view() -> dict[str, Any] | None:
        last.update(await (await client.get(f"/v1/models/{model_id}")).json())
        return dict(last) if done(last) else None

    return await eventually(view, within, lambda: f"model {model_id} never got there: {last}", interval=0.05)


async def test_scheduled_refresh_switches_without_a_request(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    write_safetensors(tmp_path / "src" / "m.bin", MiB, seed=1)
    settings = Settings(
        cache_dir=tmp_path / "cache", token=TOKEN, chunk_bytes=MiB, refresh_seconds=0.2
    ).validate()
    client = await aiohttp_client(create_app(settings))
    with run_origin(tmp_path / "src") as origin:
        uri = f"{origin.url}/m.bin"
        first = await until_ready(client, uri)
        write_safetensors(tmp_path / "src" / "m.bin", MiB + 1, seed=2)
        view = await until(client, model_ref(uri).id, lambda v: v.get("revision") != first["revision"])
    assert view["state"] == "ready" and view["path"] != first["path"]
