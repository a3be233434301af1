"""Peers on a real kube-apiserver: only the agents' ServiceAccount (audience model-locality-peer) may
read from an agent, and agents find each other through their own Pods' labels."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.config import Settings
from agent.fetch.cache import Cache
from agent.peers.auth import KubePeerGate
from agent.peers.holdings import Holdings
from agent.peers.kubedir import PREFIX, URL_ANNOTATION, KubeDirectory
from agent.peers.limits import Uploads
from agent.peers.metrics import PeerMetrics
from agent.peers.podsync import PodSync
from agent.peers.server import peer_app
from locality.auth import AUDIENCE, PEER_AUDIENCE
from locality.identity import model_ref
from tests.fixtures.origin import run_origin
from tests.fixtures.polling import eventually
from tests.fixtures.ports import free_port
from tests.fixtures.realkube import RealKube

NS, AGENT_SA = "model-locality", "model-locality-agent"
SERVING_NS = "peer-serving"
MiB = 2**20


@pytest.fixture()
async def endpoint(real_kube: RealKube, tmp_path: Path) -> AsyncIterator[tuple[str, str, str, PeerMetrics]]:
    """One agent's peer endpoint on the real API's TokenReview, holding one committed model."""
    real_kube.create_service_account(NS, AGENT_SA)
    real_kube.create_service_account(SERVING_NS, "default")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "w.bin").write_bytes(b"weights" * 100_000)
    kube = real_kube.connect()
    cache = Cache(Settings(cache_dir=tmp_path / "cache", chunk_bytes=MiB).validate())
    metrics = PeerMetrics()
    with run_origin(tmp_path / "src") as origin:
        record = await cache.fetch(model_ref(f"{origin.url}/w.bin"))
    runner = web.AppRunner(peer_app(Holdings(cache.layout), KubePeerGate(kube), Uploads(4, 0), metrics))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/v1/peer/models/{record.id}", record.revision or "", record.id, metrics
    finally:
        await runner.cleanup()
        await kube.close()


async def get(url: str, revision: str, token: str | None, path: str = "") -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if path:
        headers["Range"] = "bytes=0-99"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url + path, params={"revision": revision}, headers=headers) as resp,
    ):
        return resp.status, await resp.read()


async def test_only_the_agents_service_account_reads_from_an_agent(
    real_kube: RealKube, endpoint: tuple[str, str, str, PeerMetrics]
) -> None:
    url, revision, _, metrics = endpoint
    agent = real_kube.token_for(NS, AGENT_SA, audiences=[PEER_AUDIENCE])
    assert (await get(url, revision, agent))[0] == 200
    status, body = await get(url, revision, agent, "/files/w.bin")
    assert status == 206 and body == (b"weights" * 100_000)[:100]

    refused = {
        "no token": (None, 401),
        "a serving pod's token (audience model-locality)": (
            real_kube.token_for(SERVING_NS, "default", audiences=[AUDIENCE]),
            401,
        ),
        "a serving pod's own token for the peer audience": (
            real_kube.token_for(SERVING_NS, "default", audiences=[PEER_AUDIENCE]),
            403,
        ),
        "the agent's token for another audience": (
            real_kube.token_for(NS, AGENT_SA, audiences=[AUDIENCE]),
            401,
        ),
        "garbage": ("not-a-token", 401),
    }
    for why, (token, want) in refused.items():
        for path in ("", "/files/w.bin"):
            status, body = await get(url, revision, token, path)
            assert status == want, f"{why} {path or 'map'}: {status} {body[:200]!r}"
            assert b"weights" not in body
    assert metrics.peer_refused.labels("forbidden")._value.get() == 2
    assert metrics.peer_refused.labels("unauthenticated")._value.get() == 8


async def test_agents_find_each_other_by_their_pods_labels(real_kube: RealKube, tmp_path: Path) -> None:
    real_kube.create_service_account(NS, AGENT_SA)
    kube = real_kube.connect()
    names = ["agent-a", "agent-b", "agent-c"]
    for name in names:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {"app.kubernetes.io/name": AGENT_SA}},
            "spec": {
                "nodeName": f"node-{name}",
                "serviceAccountName": AGENT_SA,
                "containers": [{"name": "agent", "image": "agent:test"}],
            },
        }
        real_kube.apply_manifests([pod])
        real_kube.request(  # no kubelet here: say it runs (the directory skips pods not running)
            "PATCH",
            f"/api/v1/namespaces/{NS}/pods/{name}/status",
            {"status": {"phase": "Running"}},
            content_type="application/merge-patch+json",
        )
    holdings = Holdings(Cache(Settings(cache_dir=tmp_path / "c").validate()).layout)
    try:
        syncs = {
            n: PodSync(kube, NS, n, f"node-{n}", f"http://{n}:8472", held=list, holdings=holdings, debounce=0)
            for n in names
        }
        syncs["agent-a"].held = lambda: [("0123456789abcdef", "rev1aaaaaaaa")]  # holds revision 1
        syncs["agent-b"].held = lambda: [("0123456789abcdef", "rev2bbbbbbbb")]  # holds another revision
        for sync in syncs.values():
            await sync.sync_once()
        directory = KubeDirectory(kube, NS, "agent-c", lambda: None)
        want = {"agent-a": "http://agent-a:8472"}  # not b (other revision), not c itself

        async def listed() -> bool:
            return await directory.peers("0123456789abcdef", "rev1aaaaaaaa") == want

        await eventually(listed, what="agent-a listed as the only peer")  # type: ignore[arg-type]
        pod = real_kube.request("GET", f"/api/v1/namespaces/{NS}/pods/agent-a")
        assert pod["metadata"]["labels"][f"{PREFIX}0123456789abcdef"].endswith(".rev1aaaa")
        assert pod["metadata"]["annotations"][URL_ANNOTATION] == "http://agent-a:8472"
        syncs["agent-a"].held = list  # evicted: the label goes
        await syncs["agent-a"].sync_once()
        want = {}
        await eventually(listed, what="agent-a gone from the directory")  # type: ignore[arg-type]
    finally:
        await kube.close()

