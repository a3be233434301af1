"""The cache with many writers in one process, unreadable records, partial fetches and damage after commit."""

from __future__ import annotations

import asyncio
import filecmp
import os
import random
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from agent.cli import main
from agent.config import Settings
from agent.face.app import create_app
from agent.fetch.cache import Cache, Progress
from agent.fetch.chunks import RetryPolicy
from locality.identity import model_ref
from locality.records import Layout, load_record
from tests.fixtures.origin import Faults, run_origin
from tests.fixtures.polling import eventually

KiB, MiB = 2**10, 2**20
FAST_RETRY = RetryPolicy(attempts=5, base=0.01, cap=0.05)


def make_cache(root: Path, **kw: Any) -> Cache:
    settings = Settings(cache_dir=root, chunk_bytes=MiB, concurrency=4, **kw).validate()
    return Cache(settings, retry=FAST_RETRY)


def write_files(src: Path, count: int, size: int) -> list[str]:
    src.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (src / f"f{i:02d}.bin").write_bytes(os.urandom(size))
    return [f"f{i:02d}.bin" for i in range(count)]


async def test_pins_touches_and_evictions_from_threads_and_the_loop(tmp_path: Path) -> None:
    names = write_files(tmp_path / "src", 10, 64 * KiB)
    with run_origin(tmp_path / "src") as origin:
        cache = make_cache(tmp_path / "cache")
        ids = [(await cache.fetch(model_ref(f"{origin.url}/{n}"))).id for n in names]
    kept, loose = ids[:5], ids[5:]
    for model_id in kept:
        cache.pin(model_id, "keep")
    # A quota that the pinned five alone fill: every gc wants to evict, and only loose ones may go.
    cache.settings = Settings(cache_dir=cache.root, quota_bytes=5 * 64 * KiB, chunk_bytes=MiB).validate()
    stop = threading.Event()
    evicted: list[str] = []

    def pinner(worker: int) -> None:
        for k in range(40):
            for model_id in kept:
                cache.pin(model_id, f"t{worker}:{k}")

    def toucher() -> None:
        rng = random.Random(1)
        while not stop.is_set():
            model_id = rng.choice(ids)
            if cache.get(model_id) is not None:
                try:
                    cache.touch(model_id)
                except Exception:  # evicted between get and touch
                    pass

    def collector() -> None:
        while not stop.is_set():
            evicted.extend(cache.gc())

    async def loop_pins() -> None:
        for k in range(40):
            for model_id in kept:
                await asyncio.to_thread(cache.pin, model_id, f"loop:{k}")
                await asyncio.to_thread(cache.unpin, model_id, f"loop:{k}")

    background = [threading.Thread(target=toucher), threading.Thread(target=collector)]
    for thread in background:
        thread.start()
    try:
        await asyncio.gather(asyncio.to_thread(pinner, 1), asyncio.to_thread(pinner, 2), loop_pins())
    finally:
        stop.set()
        for thread in background:
            thread.join()
    assert set(evicted) <= set(loose) and set(evicted) == set(loose)  # the loose ones went, only they
    want = {"keep"} | {f"t{w}:{k}" for w in (1, 2) for k in range(40)}
    fresh = make_cache(cache.root)  # what the disk says
    for model_id in kept:
        assert cache.get(model_id) is not None and (cache.root / "models" / model_id).is_dir()
        assert cache.get(model_id).pins == want  # type: ignore[union-attr]  # no pin lost
        assert fresh.get(model_id).pins == want  # type: ignore[union-attr]
    assert sorted(os.listdir(cache.root / "models")) == sorted(kept)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda text: text[: len(text) // 2], id="truncated"),
        pytest.param(lambda text: text.replace('"', "\x00", 1), id="one-bad-byte"),
        pytest.param(lambda text: text.replace('"files"', '"entries"'), id="field-renamed"),
    ],
)
async def test_an_unreadable_record_quarantines_its_model(
    damage: Callable[[str], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    names = write_files(tmp_path / "src", 1, 300 * KiB)
    with run_origin(tmp_path / "src") as origin:
        cache = make_cache(tmp_path / "cache")
        record = await cache.fetch(model_ref(f"{origin.url}/{names[0]}"))
    root, path = cache.root, cache.root / "records" / f"{record.id}.json"
    bad = damage(path.read_text())
    path.write_text(bad)
    settings = Settings(cache_dir=root, chunk_bytes=MiB).validate()
    client = await aiohttp_client(create_app(settings))
    listed = await (await client.get("/v1/models")).json()
    assert [(v["id"], v["state"]) for v in listed] == [(record.id, "quarantined")]
    metrics = await (await client.get("/metrics")).text()
    assert "model_locality_agent_quarantined_models 1.0" in metrics
    assert 'model_locality_agent_models{state="ready"} 0.0' in metrics  # no label: not ready
    await client.close()
    kept = root / "quarantine" / record.id / names[0]
    assert filecmp.cmp(kept, tmp_path / "src" / names[0], shallow=False)  # the bytes are kept
    assert (root / "quarantine" / f"{record.id}.json").read_text() == bad  # the record kept beside
    code = main(["ls", "--cache-dir", str(root)], environ={})
    out, _ = capsys.readouterr()
    assert code == 0 and record.id in out and "quarantined" in out
    assert main(["rm", record.id, "--cache-dir", str(root)], environ={}) == 0
    assert not (root / "quarantine" / record.id).exists()
    assert make_cache(root).quarantined() == [] and make_cache(root).usage()[0] == 0


async def test_partial_fetch_is_listed_counted_collected_and_resumed(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    names = write_files(tmp_path / "src", 1, 6 * MiB)
    with run_origin(tmp_path / "src", faults=Faults(throttle_bps=4 * MiB)) as origin:
        uri = f"{origin.url}/{names[0]}"
        ref = model_ref(uri)
        settings = Settings(cache_dir=tmp_path / "cache", chunk_bytes=MiB, concurrency=2, token="t0k3n")
        client = await aiohttp_client(create_app(settings.validate()))
        headers = {"Authorization": "Bearer t0k3n"}
        assert (await client.post("/v1/models", json={"uri": uri}, headers=headers)).status == 202

        async def some_bytes() -> bool:
            view = await (await client.get(f"/v1/models/{ref.id}")).json()
            return int(view["bytes_done"] or 0) >= 2 * MiB

        await eventually(some_bytes, within=30, what="2 MiB fetched")
        await client.close()  # SIGTERM-like: the fetch is checkpointed, the request remembered
        cache = make_cache(settings.cache_dir)
        [partial] = cache.partials()
        assert partial.id == ref.id and 2 * MiB <= partial.bytes_done < partial.bytes_total == 6 * MiB
        assert cache.usage()[0] >= partial.allocated > 0  # the quota counts it
        code = main(["ls", "--cache-dir", str(settings.cache_dir)], environ={})
        out, _ = capsys.readouterr()
        assert code == 0 and "partial" in out and "/ 6.0 MiB" in out  # done / total, human sizes
        before = len(origin.gets())
        origin.faults.throttle_bps = 0
        client = await aiohttp_client(create_app(settings))  # a restart resumes the accepted fetch

        async def ready() -> bool:
            view = await (await client.get(f"/v1/models/{ref.id}")).json()
            return bool(view["state"] == "ready")

        await eventually(ready, within=30, what="resumed fetch ready")
        await client.close()
        again = origin.gets()[before:]
    assert 0 < len(again) <= 4  # kept its place: only the missing chunks
    assert filecmp.cmp(settings.cache_dir / "models" / ref.id / names[0], tmp_path / "src" / names[0])


async def test_gc_removes_an_idle_partial_fetch(tmp_path: Path) -> None:
    names = write_files(tmp_path / "src", 1, 4 * MiB)
    with run_origin(tmp_path / "src", faults=Faults(throttle_bps=4 * MiB)) as origin:
        cache = make_cache(tmp_path / "cache")
        started = asyncio.Event()

        def progress(p: Progress) -> None:
            if p.bytes_done:
                started.set()

        task = asyncio.create_task(cache.fetch(model_ref(f"{origin.url}/{names[0]}"), progress))
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    model_id = model_ref(f"{origin.url}/{names[0]}").id
    small = make_cache(cache.root, quota_bytes=MiB)  # the preallocated 4 MiB are over this quota
    assert [p.id for p in small.partials()] == [model_id]
    assert small.gc() == [model_id]
    assert small.partials() == [] and not (cache.root / "staging" / model_id).exists()
    assert make_cache(cache.root).usage()[0] == 0


async def test_damage_after_commit_is_never_reported_ready(tmp_path: Path) -> None:
    names = write_files(tmp_path / "src", 1, 8)
    with run_origin(tmp_path / "src") as origin:
        ref = model_ref(f"{origin.url}/{names[0]}")
        cache = make_cache(tmp_path / "cache")
        record = await cache.fetch(ref)
        target = cache.model_path(record.id) / names[0]
        data = bytearray(target.read_bytes())
        data[3] ^= 0xFF
        target.write_bytes(bytes(data))  # same size, new mtime
        assert cache.verify(record.id) == [f"{names[0]}: xxh3_128 mismatch in bytes 0..8 (end exclusive)"]
        assert cache.check(record.id) == [f"{names[0]}: modified after commit (mtime changed)"]
        gets = len(origin.gets())
        cache.pin(record.id, "pod:ns/p")
        again = await cache.fetch(ref)  # not the damaged copy: fetched again, pins kept
        assert len(origin.gets()) > gets
        assert target.read_bytes() == (tmp_path / "src" / names[0]).read_bytes()
        assert again.pins == {"pod:ns/p"}
    assert load_record(Layout(cache.root), record.id) is not None
