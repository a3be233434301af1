"""Agents fetching one model together on loopback: each byte leaves the origin about once, every copy
is byte-exact, and bad or vanishing peers cost time, never correctness."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from agent.config import Settings
from agent.fetch.cache import Cache
from agent.fetch.chunks import RetryPolicy
from agent.peers.auth import StaticPeerGate, TokenSource
from agent.peers.directory import StaticDirectory
from agent.peers.holdings import Holdings
from agent.peers.limits import Uploads
from agent.peers.metrics import PeerMetrics
from agent.peers.plan import Limits
from agent.peers.server import peer_app
from agent.peers.swarm import PeerNet, movers
from locality.identity import model_ref
from tests.fixtures.origin import Faults, Origin, run_origin
from tests.fixtures.ports import free_port
from tests.fixtures.proxy import run_proxy

MiB = 2**20
TOKEN = "peer-secret-for-tests"
FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05, read_timeout=5, connect_timeout=2)


@dataclass
class Agent:
    name: str
    cache: Cache
    net: PeerNet
    metrics: PeerMetrics
    runner: web.AppRunner


def origin_bytes(origin: Origin, path: str) -> int:
    total = 0
    for rng in origin.gets(path):
        first, _, last = rng.removeprefix("bytes=").partition("-")
        total += int(last) - int(first) + 1
    return total


@asynccontextmanager
async def agents(root: Path, count: int, *, upload_bps: float = 0) -> AsyncIterator[list[Agent]]:
    """``count`` agents on loopback, each with its own cache and peer endpoint, knowing each other."""
    ports = [free_port() for _ in range(count)]
    urls = {f"http://127.0.0.1:{p}": f"http://127.0.0.1:{p}" for p in ports}
    out: list[Agent] = []
    try:
        for i, port in enumerate(ports):
            name = f"http://127.0.0.1:{port}"
            settings = Settings(cache_dir=root / f"a{i}", chunk_bytes=MiB, concurrency=4).validate()
            holdings, metrics = Holdings(Cache(settings).layout), PeerMetrics()
            net = PeerNet(
                StaticDirectory(name, urls),
                TokenSource(token=TOKEN),
                holdings,
                metrics,
                limits=Limits(orphan_grace=1.0),
                peer_timeout=2.0,
                poll_seconds=0.05,
            )
            cache = Cache(settings, retry=FAST, movers=movers(net))
            app = peer_app(holdings, StaticPeerGate(TOKEN), Uploads(8, upload_bps), metrics)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            out.append(Agent(name, cache, net, metrics, runner))
        yield out
    finally:
        for agent in out:
            await agent.runner.cleanup()


def write_model(path: Path, size: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path.write_bytes(data)
    return data


async def test_four_agents_fetch_one_model_each_byte_leaves_the_origin_about_once(tmp_path: Path) -> None:
    data = write_model(tmp_path / "src" / "model.bin", 32 * MiB + 4321)
    with run_origin(tmp_path / "src", faults=Faults(throttle_bps=16 * MiB)) as origin:
        ref = model_ref(f"{origin.url}/model.bin")
        async with agents(tmp_path, 4) as group:
            records = await asyncio.gather(*(a.cache.fetch(ref) for a in group))
            egress = origin_bytes(origin, "/model.bin")
            tallies = [a.net.tallies[ref.id] for a in group]
    for agent, record in zip(group, records, strict=True):
        assert (agent.cache.model_path(record.id) / "model.bin").read_bytes() == data
    assert egress <= 1.05 * len(data), f"origin sent {egress / len(data):.2f}x the model"
    assert sum(t.origin_bytes for t in tallies) == egress
    assert all(sum(t.peer_bytes.values()) > 0 for t in tallies)  # everybody got chunks from peers
    assert sum(t.bad_chunks for t in tallies) == 0


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


async def test_a_peer_serving_a_corrupted_chunk_is_dropped_and_the_chunk_comes_from_elsewhere(
    tmp_path: Path,
) -> None:
    data = write_model(tmp_path / "src" / "model.bin", 16 * MiB)
    with run_origin(tmp_path / "src", faults=Faults(throttle_bps=4 * MiB)) as origin:
        ref = model_ref(f"{origin.url}/model.bin")
        async with agents(tmp_path, 3) as (holder, *fetchers):
            origin.faults.throttle_bps = 0
            record = await holder.cache.fetch(ref)  # the holder commits first
            origin.faults.throttle_bps = 4 * MiB  # now the origin is slow: the holder is the better source
            for index in range(16):  # bit rot on the holder's disk under every chunk
                flip_byte(holder.cache.model_path(record.id) / "model.bin", index * MiB + 7)
            records = await asyncio.gather(*(a.cache.fetch(ref) for a in fetchers))
            tallies = [a.net.tallies[ref.id] for a in fetchers]
    for agent, got in zip(fetchers, records, strict=True):
        assert (agent.cache.model_path(got.id) / "model.bin").read_bytes() == data
    assert all(holder.name in t.dropped for t in tallies if t.bad_chunks)
    assert sum(t.bad_chunks for t in tallies) >= 1
    bad = sum(a.metrics.peer_errors.labels("digest")._value.get() for a in fetchers)
    assert bad == sum(t.bad_chunks for t in tallies)
    assert all(t.peer_bytes.get(holder.name, 0) == 0 for t in tallies)  # not one byte of it was kept


async def test_a_peer_killed_mid_transfer_the_fetch_completes(tmp_path: Path) -> None:
    data = write_model(tmp_path / "src" / "model.bin", 16 * MiB)
    with run_origin(tmp_path / "src") as origin:
        ref = model_ref(f"{origin.url}/model.bin")
        async with agents(tmp_path, 2, upload_bps=4 * MiB) as (holder, fetcher):
            await holder.cache.fetch(ref)
            origin.faults.throttle_bps = 2 * MiB  # slower than the holder: chunks come from the holder
            job = asyncio.create_task(fetcher.cache.fetch(ref))
            for _ in range(200):
                tally = fetcher.net.tallies.get(ref.id)
                if tally is not None and tally.peer_bytes.get(holder.name, 0) >= 2 * MiB:
                    break
                await asyncio.sleep(0.05)
            await holder.runner.cleanup()  # the holder dies with transfers in flight
            origin.faults.throttle_bps = 0
            record = await asyncio.wait_for(job, 60)
            tally = fetcher.net.tallies[ref.id]
    assert (fetcher.cache.model_path(record.id) / "model.bin").read_bytes() == data
    assert 2 * MiB <= tally.peer_bytes[holder.name] < 16 * MiB
    assert tally.origin_bytes > 0


async def test_a_peer_of_another_revision_is_never_used(tmp_path: Path) -> None:
    write_model(tmp_path / "src" / "model.bin", 8 * MiB)
    with run_origin(tmp_path / "src") as origin:
        ref = model_ref(f"{origin.url}/model.bin")
        async with agents(tmp_path, 2) as (holder, fetcher):
            old = await holder.cache.fetch(ref)
            new_data = write_model(tmp_path / "src" / "model.bin", 8 * MiB)  # the origin changed
            before = origin_bytes(origin, "/model.bin")
            record = await fetcher.cache.fetch(ref)
            egress = origin_bytes(origin, "/model.bin") - before
            tally = fetcher.net.tallies[ref.id]
    assert record.revision != old.revision
    assert (fetcher.cache.model_path(record.id) / "model.bin").read_bytes() == new_data
    assert tally.peer_bytes == {} and egress == 8 * MiB


async def test_a_map_request_for_a_revision_not_held_yet_is_answered_when_its_fetch_starts(
    tmp_path: Path,
) -> None:
    """Agents that start one model a moment apart see each other at once: a peer asked (with
    ``wait``) for a revision it does not hold holds the question until its fetch begins."""
    write_model(tmp_path / "src" / "model.bin", 4 * MiB)
    with run_origin(tmp_path / "src") as origin:
        ref = model_ref(f"{origin.url}/model.bin")
        async with agents(tmp_path, 2) as (holder, late), aiohttp.ClientSession() as http:
            revision = (await holder.cache.fetch(ref)).revision or ""
            url = f"{late.name}/v1/peer/models/{ref.id}"
            headers = {"Authorization": f"Bearer {TOKEN}"}
            asked = asyncio.create_task(
                http.get(url, params={"revision": revision, "wait": "30"}, headers=headers)
            )
            await asyncio.sleep(0.3)
            assert not asked.done()  # held: nothing to say yet
            record = await late.cache.fetch(ref)
            async with await asyncio.wait_for(asked, 10) as resp:
                status, body = resp.status, await resp.json()
            params = {"revision": "another-revision", "wait": "0.2"}
            async with http.get(url, params=params, headers=headers) as resp:
                missing, error = resp.status, await resp.json()
    assert record.revision == revision
    assert status == 200 and body["revision"] == revision and body["state"] in ("fetching", "ready")
    assert missing == 404 and "holds no such model revision" in error["error"]


async def test_origin_reads_keep_going_through_the_proxy_peer_reads_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose origin traffic goes through an HTTP proxy (Dragonfly's dfdaemon, a corporate
    proxy) keeps it: the origin's share of the chunks goes through it, the peers' never does."""
    data = write_model(tmp_path / "src" / "model.bin", 12 * MiB)
    with run_proxy() as proxy, run_origin(tmp_path / "src", faults=Faults(throttle_bps=8 * MiB)) as origin:
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        ref = model_ref(f"{origin.url}/model.bin")
        async with agents(tmp_path, 3) as group:
            records = await asyncio.gather(*(a.cache.fetch(ref) for a in group))
            tallies = [a.net.tallies[ref.id] for a in group]
            through = list(proxy.seen)
    for agent, record in zip(group, records, strict=True):
        assert (agent.cache.model_path(record.id) / "model.bin").read_bytes() == data
    assert all(sum(t.peer_bytes.values()) > 0 for t in tallies)
    assert through and all(target.startswith(origin.url) for _, target in through), through
    assert egress_ok(origin, len(data))


def egress_ok(origin: Origin, size: int) -> bool:
    return origin_bytes(origin, "/model.bin") <= 1.05 * size
