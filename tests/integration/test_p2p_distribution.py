"""ModelDistributions use peers with nothing set for them, on the real API server: the real
extender's reconciler writes ``status.targets``; each target is a whole agent (``create_app`` as
``model-agent serve`` composes it, settings parsed from the manifest's flags and downward-API
environment) with its ServiceAccount's tokens bound to its Pod, found by its Pod's labels.

- A lone fetch (a distribution to one node, nobody else fetching or holding the model) asks the
  origin for ``--concurrency`` chunks at once, from its first request (no 2-stream warm-up).
- A distribution to three nodes: every copy byte-exact, the origin sends the model about once.
- What decides between the two: the first LIST that shows a fetcher its own label (``joined``),
  and a target that has verified every chunk stays a holder until its commit is on disk.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from agent.cli import build_parser
from agent.cluster.access import AccessGate
from agent.config import Settings, settings_from_args
from agent.face.app import MANAGER, Deps, create_app
from agent.fetch.cache import Cache
from agent.peers import wiring
from agent.peers.holdings import Holdings, LiveFetch
from agent.peers.kubedir import KubeDirectory
from agent.peers.metrics import PeerMetrics
from agent.peers.podsync import PodSync
from locality import auth
from locality.auth import PEER_AUDIENCE
from locality.identity import model_ref
from locality.kube import Kube
from locality.records import Layout
from locality.tasks import stop, supervised
from tests.fixtures.extender import Client, extender_apps
from tests.fixtures.origin import Faults, Origin, run_origin
from tests.fixtures.polling import eventually
from tests.fixtures.ports import free_port
from tests.fixtures.realkube import RealKube
from tests.fixtures.realkube_manifests import NAMESPACE, agent_token, apply_access, kubeconfig_file

AGENT_SA = "model-locality-agent"
MD = "/apis/model-locality.io/v1alpha1/modeldistributions"
POOL = "p2p-distribution-test"
MiB = 2**20


@dataclass
class Agent:
    node: str
    client: TestClient[Any, Any]

    async def view(self, model_id: str) -> dict[str, Any]:
        resp = await self.client.get(f"/v1/models/{model_id}")
        body: dict[str, Any] = await resp.json() if resp.status == 200 else {}
        return body

    def model_file(self, model_id: str) -> Path:
        return Path(self.client.app[MANAGER].cache.model_path(model_id)) / "model.bin"


@pytest.fixture(scope="module")
def kube_access(real_kube: RealKube, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The manifests' access objects applied; the extender's kubeconfig (its ServiceAccount)."""
    apply_access(real_kube)
    token = real_kube.token_for(NAMESPACE, "model-locality-extender")
    return kubeconfig_file(real_kube, tmp_path_factory.mktemp("extender"), token, "extender")


def agent_pod(real: RealKube, node: str, root: Path) -> tuple[Path, Path]:
    """A GPU Node, the agent's Pod on it (Running, as its kubelet would report it), and the
    agent's two tokens bound to that Pod: API access (kubeconfig) and peer identity (the file the
    DaemonSet's projected volume holds)."""
    root.mkdir(parents=True)
    real.create_gpu_node(node, {"pool": POOL})
    token = agent_token(real, node)  # creates Pod agent-<node> on <node>
    pod = f"agent-{node}"
    path = f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}"
    real.request("PATCH", f"{path}/status", {"status": {"phase": "Running"}},
                 content_type="application/merge-patch+json")  # fmt: skip
    uid = real.request("GET", path)["metadata"]["uid"]
    peer = real.token_for(NAMESPACE, AGENT_SA, audiences=[PEER_AUDIENCE], bound_pod=(pod, uid))
    (root / "peer-token").write_text(peer)
    return kubeconfig_file(real, root, token, pod), root / "peer-token"


async def start_agent(real: RealKube, aiohttp_client: Client, root: Path, node: str, *flags: str) -> Agent:
    """``model-agent serve`` in-process, as the DaemonSet runs it. Besides the manifest's flags
    only what one host needs for several agents: its own ports, the kubeconfig and token path
    where a pod has in-cluster ones."""
    kubeconfig, peer_token = agent_pod(real, node, root)
    argv = ["serve", "--host=127.0.0.1", f"--port={free_port()}", f"--cache-dir={root / 'cache'}",
            f"--kubeconfig={kubeconfig}", f"--peer-port={free_port()}", *flags]  # fmt: skip
    environ = {
        "NODE_NAME": node,
        "POD_NAME": f"agent-{node}",
        "POD_NAMESPACE": NAMESPACE,
        "POD_IP": "127.0.0.1",
        "MODEL_LOCALITY_PEER_SA_TOKEN_FILE": str(peer_token),
    }
    settings = settings_from_args(build_parser().parse_args(argv), environ)
    kube = Kube.connect(settings.kubeconfig, request_timeout=5.0)
    assert kube is not None
    peers = wiring.build(settings, kube, PeerMetrics())
    assert peers is not None, "peers are on by default in a cluster"
    deps = Deps(kube=kube, authenticator=auth.build(None, kube), access=AccessGate(kube), peers=peers)
    app = create_app(settings, deps)

    async def close_kube(_: web.Application) -> None:
        await kube.close()

    app.on_cleanup.append(close_kube)
    client = await aiohttp_client(app)

    async def ready() -> bool:
        return (await client.get("/readyz")).status == 200

    await eventually(ready, what=f"agent on {node} ready")  # type: ignore[arg-type]
    return Agent(node, client)


@asynccontextmanager
async def distribution(real: RealKube, name: str, uri: str, replicas: int) -> AsyncIterator[None]:
    obj = {
        "apiVersion": "model-locality.io/v1alpha1",
        "kind": "ModelDistribution",
        "metadata": {"name": name},
        "spec": {"uri": uri, "replicas": replicas, "nodeSelector": {"pool": POOL}},
    }
    real.apply_manifests([obj])
    try:
        yield
    finally:
        real.request("DELETE", f"{MD}/{name}")


def status(real: RealKube, name: str) -> dict[str, Any]:
    found: dict[str, Any] = real.request("GET", f"{MD}/{name}").get("status") or {}
    return found


def egress(origin: Origin) -> int:
    """Bytes the origin sent for the model's body (every ranged GET)."""
    total = 0
    for rng in origin.gets("/model.bin"):
        first, _, last = rng.removeprefix("bytes=").partition("-")
        total += int(last) - int(first) + 1
    return total


@pytest.fixture()
def clean(real_kube: RealKube, kube_access: Path) -> RealKube:
    """No Nodes or distributions of other tests (the extender would count them)."""
    real_kube.delete_all("nodes")
    real_kube.delete_all("modeldistributions", "model-locality.io/v1alpha1")
    return real_kube


async def test_a_lone_fetch_asks_the_origin_for_concurrency_chunks_at_once(
    clean: RealKube, kube_access: Path, aiohttp_client: Client, tmp_path: Path
) -> None:
    (tmp_path / "src").mkdir()
    data = os.urandom(40 * MiB)  # 10 chunks of 4 MiB
    (tmp_path / "src" / "model.bin").write_bytes(data)
    # 1 s a chunk: a warm-up (2 streams for 2 s) would show as 2 requests open when the first ends
    with run_origin(tmp_path / "src", faults=Faults(throttle_bps=4 * MiB)) as origin:
        ref = model_ref(f"{origin.url}/model.bin")
        async with extender_apps(kube_access, aiohttp_client, request_timeout=5.0) as extender:
            await extender()
            agent = await start_agent(clean, aiohttp_client, tmp_path / "lone-0", "lone-0",
                                      "--chunk-size=4Mi", "--concurrency=6")  # fmt: skip
            async with distribution(clean, "lone", ref.uri, 1):
                await eventually(lambda: status(clean, "lone").get("ready") == 1, within=60,
                                 what="the one target ready", interval=0.2)  # fmt: skip
                view = await agent.view(ref.id)
    assert agent.model_file(ref.id).read_bytes() == data
    assert view["origin_bytes"] == len(data) == egress(origin) and view["peer_bytes"] == 0
    assert origin.peak_at_first_end == 6, "every worker asked the origin before any chunk ended"


async def test_a_distribution_to_three_nodes_takes_the_model_from_the_origin_about_once(
    clean: RealKube, kube_access: Path, aiohttp_client: Client, tmp_path: Path
) -> None:
    (tmp_path / "src").mkdir()
    data = os.urandom(6 * 32 * MiB + 12345)  # 7 chunks at the default --chunk-size (32 MiB)
    (tmp_path / "src" / "model.bin").write_bytes(data)
    nodes = [f"dist-{i}" for i in range(3)]
    with run_origin(tmp_path / "src", faults=Faults(throttle_bps=32 * MiB)) as origin:
        ref = model_ref(f"{origin.url}/model.bin")
        async with extender_apps(kube_access, aiohttp_client, request_timeout=5.0) as extender:
            await extender()
            agents = [await start_agent(clean, aiohttp_client, tmp_path / n, n) for n in nodes]
            async with distribution(clean, "to-three", ref.uri, 3):
                await eventually(lambda: status(clean, "to-three").get("ready") == 3, within=90,
                                 what="three targets ready", interval=0.2)  # fmt: skip
                assert status(clean, "to-three")["targets"] == nodes
                views = [await a.view(ref.id) for a in agents]
    for agent in agents:
        assert agent.model_file(ref.id).read_bytes() == data, agent.node
    sent = egress(origin)
    assert sent <= 1.3 * len(data), f"the origin sent {sent / len(data):.2f}x the model"
    assert sum(v["origin_bytes"] for v in views) == sent
    assert all(v["origin_bytes"] + v["peer_bytes"] == len(data) for v in views), views
    assert sum(v["peer_bytes"] for v in views) >= len(data), views  # two copies or more came from peers


async def test_joined_says_alone_only_once_it_sees_its_own_label(clean: RealKube, tmp_path: Path) -> None:
    """X fetches first: alone. Y, same revision, after X: sees X. Z, whose label is never
    written (its PodSync does not run): unknown (None), so it keeps the warm-up."""
    kube = clean.connect()
    model, revision = "00112233445566ff", "cafe0123456789"
    tasks = []
    try:
        found: dict[str, dict[str, str] | None] = {}
        for name in ("x", "y", "z"):
            pod = f"agent-joined-{name}"
            agent_pod(clean, f"joined-{name}", tmp_path / name)
            holdings = Holdings(Layout(tmp_path / name / "cache"))
            holdings.start(LiveFetch(model, revision, MiB, {}, tmp_path / name, {}))
            sync = PodSync(kube, NAMESPACE, pod, f"joined-{name}", f"http://{name}:8472", held=list,
                           holdings=holdings, debounce=0)  # fmt: skip
            if name != "z":
                tasks.append(supervised(f"podsync-{name}", sync.run))
            directory = KubeDirectory(kube, NAMESPACE, pod, sync.poke, visible_within=1.0)
            found[name] = await directory.joined(model, revision)
    finally:
        await stop(tasks)
        await kube.close()
    assert found == {"x": {}, "y": {"agent-joined-x": "http://x:8472"}, "z": None}


async def test_a_settled_fetch_is_served_until_its_commit_is_on_disk(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.bin").write_bytes(os.urandom(MiB))
    with run_origin(tmp_path / "src") as origin:
        ref = model_ref(f"{origin.url}/model.bin")
        cache = Cache(Settings(cache_dir=tmp_path / "c", chunk_bytes=MiB).validate())
        record = await cache.fetch(ref)
    assert record.revision is not None
    holdings, staging = Holdings(cache.layout), tmp_path / "staging"
    staging.mkdir()
    for model_id, revision in ((ref.id, record.revision), ("feedfacefeedface", "r2")):
        holdings.start(LiveFetch(model_id, revision, MiB, {}, staging, {("model.bin", 0): "d"}))
        holdings.settle(model_id)
    # Not committed yet: served from staging, as a holder ("ready"), still labelled as fetching.
    found = holdings.find("feedfacefeedface", "r2")
    assert found is not None and found[0].state == "ready" and found[1] == staging
    # Committed (record and files on disk): the committed model replaces the settled fetch.
    found = holdings.find(ref.id, record.revision)
    assert found is not None and found[1] == cache.model_path(ref.id) and found[1] != staging
    assert holdings.live_revisions() == [("feedfacefeedface", "r2")]
    staging.rmdir()  # a commit that failed and took its staging away: nothing is served
    assert holdings.find("feedfacefeedface", "r2") is None and holdings.live_revisions() == []
