"""Agents that find each other through the real API server (their Pods' labels) and prove who they
are with real ServiceAccount tokens: four fetching at once send each byte out of the origin about
once, and a cold agent that comes later takes the whole model from the holders."""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from agent.config import Settings
from agent.fetch.cache import Cache
from agent.fetch.chunks import RetryPolicy
from agent.peers.auth import KubePeerGate, TokenSource
from agent.peers.holdings import Holdings
from agent.peers.kubedir import KubeDirectory
from agent.peers.limits import Uploads
from agent.peers.metrics import PeerMetrics
from agent.peers.plan import Limits
from agent.peers.podsync import PodSync
from agent.peers.server import peer_app
from agent.peers.swarm import PeerNet, movers
from locality.auth import PEER_AUDIENCE
from locality.identity import model_ref
from locality.kube import Kube
from locality.tasks import stop, supervised
from tests.fixtures.origin import Faults, Origin, run_origin
from tests.fixtures.ports import free_port
from tests.fixtures.realkube import RealKube

NS, AGENT_SA = "model-locality", "model-locality-agent"
MiB = 2**20
FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05, read_timeout=5, connect_timeout=2)


@dataclass
class Agent:
    name: str
    cache: Cache
    net: PeerNet


def egress(origin: Origin) -> int:
    return sum(int(r[6:].split("-")[1]) - int(r[6:].split("-")[0]) + 1 for r in origin.gets("/model.bin"))


async def start_agent(stack: AsyncExitStack, real_kube: RealKube, kube: Kube, root: Path, name: str) -> Agent:
    """One agent as the manifests run it: its Pod labelled by PodSync, found by KubeDirectory,
    its peer endpoint behind TokenReview, its own projected-style peer token."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"nodeName": f"node-{name}", "serviceAccountName": AGENT_SA,
                 "containers": [{"name": "agent", "image": "agent:test"}]},
    }  # fmt: skip
    real_kube.apply_manifests([pod])
    path = f"/api/v1/namespaces/{NS}/pods/{name}/status"
    real_kube.request(
        "PATCH", path, {"status": {"phase": "Running"}}, content_type="application/merge-patch+json"
    )
    settings = Settings(cache_dir=root / name, chunk_bytes=MiB, concurrency=4).validate()
    holdings, metrics, port = Holdings(Cache(settings).layout), PeerMetrics(), free_port()
    podsync = PodSync(
        kube, NS, name, f"node-{name}", f"http://127.0.0.1:{port}", held=list, holdings=holdings
    )
    token = real_kube.token_for(NS, AGENT_SA, audiences=[PEER_AUDIENCE])
    net = PeerNet(
        KubeDirectory(kube, NS, name, podsync.poke),
        TokenSource(token=token),
        holdings,
        metrics,
        limits=Limits(orphan_grace=1.0),
        peer_timeout=2.0,
        poll_seconds=0.05,
    )
    cache = Cache(settings, retry=FAST, movers=movers(net), on_change=lambda _: podsync.poke())
    podsync.held = lambda: [(r.id, r.revision) for r in cache.records()]
    runner = web.AppRunner(peer_app(holdings, KubePeerGate(kube), Uploads(8, 0), metrics), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stack.push_async_callback(runner.cleanup)
    task = supervised(f"podsync-{name}", podsync.run)
    stack.push_async_callback(stop, [task])
    return Agent(name, cache, net)


async def test_four_agents_via_the_api_server_then_a_cold_one_from_the_holders(
    real_kube: RealKube, tmp_path: Path
) -> None:
    real_kube.create_service_account(NS, AGENT_SA)
    (tmp_path / "src").mkdir()
    data = os.urandom(24 * MiB)
    (tmp_path / "src" / "model.bin").write_bytes(data)
    kube = real_kube.connect()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(kube.close)
        with run_origin(tmp_path / "src", faults=Faults(throttle_bps=2 * MiB)) as origin:
            ref = model_ref(f"{origin.url}/model.bin")
            group = [await start_agent(stack, real_kube, kube, tmp_path, f"p2p-{i}") for i in range(4)]
            records = await asyncio.gather(*(a.cache.fetch(ref) for a in group))
            first = egress(origin)
            cold = await start_agent(stack, real_kube, kube, tmp_path, "p2p-cold")
            record = await cold.cache.fetch(ref)
            second = egress(origin) - first
    for agent, got in [*zip(group, records, strict=True), (cold, record)]:
        assert (agent.cache.model_path(got.id) / "model.bin").read_bytes() == data
    # ~1x; the margin covers agents that find each other (LIST + label) late on a loaded machine
    assert first <= 1.3 * len(data), f"the four sent {first / len(data):.2f}x the model out of the origin"
    assert all(sum(a.net.tallies[ref.id].peer_bytes.values()) > 0 for a in group)
    assert second == 0 and sum(cold.net.tallies[ref.id].peer_bytes.values()) == len(data)
