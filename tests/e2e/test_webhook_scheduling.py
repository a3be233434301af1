"""The admission webhook and the real kube-scheduler on the real API server: a pod that says only
``model-locality.io/models`` lands on the nodes that hold its model, in both install modes.

- ``affinity``: the STOCK scheduler profile (default-scheduler, no extender) places pods by the
  preferred nodeAffinity terms the webhook added; a ``locality: required`` pod for a model no node
  holds stays Pending (the webhook's required term).
- ``scheduler``: the webhook sets ``schedulerName: model-locality-scheduler``; a second
  kube-scheduler runs manifests/scheduler/config.yaml pointed at this test's extender app, whose
  node cache watches the real Nodes.

The webhook runs in the test over TLS, registered as in tests/integration/test_webhook_kube.py.
Five GPU nodes, two warm: a pod landing warm by chance is 2/5, so four pods all warm by chance is
under 3%. No kubelet: "landed" is ``spec.nodeName`` set by the scheduler's binding.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientSession, web

from locality.contract import LOCALITY_ANNOTATION, MODELS_ANNOTATION
from locality.identity import model_ref
from scheduler_extender.app import Deps, create_app
from scheduler_extender.config import Settings
from scheduler_extender.injection import INJECTED_ANNOTATION, Install
from tests.fixtures.kustomize import load_one
from tests.fixtures.polling import eventually
from tests.fixtures.ports import free_port
from tests.fixtures.realkube import GPU, RealKube
from tests.integration.test_webhook_kube import Hook, create, pod_body, registered

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).resolve().parents[2] / "manifests" / "scheduler" / "config.yaml"
URI = "s3://models/org/webhook-model"  # the model test_webhook_kube's pods ask for
REF = model_ref(URI)
NOWHERE = model_ref("s3://models/org/held-by-no-node")
WARM = ("gpu-warm-1", "gpu-warm-2")
COLD = ("gpu-cold-1", "gpu-cold-2", "gpu-cold-3")
PODS = 4


@pytest.fixture()
def nodes(real_kube: RealKube) -> Iterator[RealKube]:
    """Two warm and three cold Ready GPU nodes, and nothing else; removed after."""
    real_kube.delete_all("nodes")
    held = json.dumps({REF.id: {"uri": REF.uri, "bytes": 10**9, "state": "ready"}})
    for name in WARM:
        real_kube.create_gpu_node(name, {REF.label_key: "ready"}, {MODELS_ANNOTATION: held}, gpus=8)
    for name in COLD:
        real_kube.create_gpu_node(name, gpus=8)
    try:
        yield real_kube
    finally:
        real_kube.delete_all("nodes")


@pytest.fixture()
def scheduler(real_kube: RealKube, tmp_path: Path) -> Iterator[Any]:
    """``start(config)``: one kube-scheduler as admin with ``config`` (leader election off)."""

    def start(config: dict[str, Any]) -> None:
        config = {**config, "leaderElection": {"leaderElect": False}}
        config["clientConnection"] = {"kubeconfig": str(real_kube.kubeconfig)}
        path = tmp_path / "scheduler-config.yaml"
        path.write_text(yaml.safe_dump(config))
        real_kube.start_scheduler(path)

    try:
        yield start
    finally:
        real_kube.stop_process("kube-scheduler")


@pytest.fixture()
async def extender(real_kube_crd: RealKube, nodes: RealKube) -> AsyncIterator[str]:
    """The extender app on a free loopback port, its node cache watching the real Nodes."""
    edge = nodes.connect()
    runner = web.AppRunner(create_app(Settings(token="e2e-token-0123456789"), Deps(kube=edge)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with ClientSession() as http:

            async def synced() -> bool:
                async with http.get(f"{url}/readyz") as resp:
                    return resp.status == 200 and (await resp.json())["nodes"] == len(WARM + COLD)

            await eventually(synced, within=15, what="the extender's node cache listed the nodes")
        yield url
    finally:
        await runner.cleanup()
        await edge.close()


def serving_pod(name: str, *, models: str = URI, required: bool = False) -> dict[str, Any]:
    """What a user writes: the annotation and a container (a GPU limit, as a server has)."""
    body = pod_body(name, models=models)
    if required:
        body["metadata"]["annotations"][LOCALITY_ANNOTATION] = "required"
    body["spec"]["containers"][0]["resources"] = {"limits": {GPU: "1"}}
    return body


def read_pod(real: RealKube, ns: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = real.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
    return found


async def bound_nodes(hook: Hook, ns: str, names: list[str]) -> dict[str, str]:
    """{pod: node} once the scheduler has bound every pod in ``names``."""
    placed: dict[str, str] = {}

    def all_bound() -> bool:
        for name in names:
            node = read_pod(hook.kube, ns, name)["spec"].get("nodeName")
            if node:
                placed[name] = node
        return len(placed) == len(names)

    try:
        await eventually(all_bound, within=20, what="every pod bound", interval=0.2)
    except AssertionError as err:
        raise AssertionError(f"{err}: {placed}\n{hook.kube.log('kube-scheduler')[-3000:]}") from None
    return placed


async def unschedulable(hook: Hook, ns: str, name: str) -> dict[str, Any]:
    """The pod's PodScheduled=False condition, once the scheduler has tried it."""
    found: dict[str, Any] = {}

    def tried() -> bool:
        for cond in read_pod(hook.kube, ns, name).get("status", {}).get("conditions") or []:
            if cond["type"] == "PodScheduled" and cond["status"] == "False":
                found.update(cond)
        return bool(found)

    await eventually(tried, within=20, what=f"{name} tried by the scheduler", interval=0.2)
    return found


async def create_all(hook: Hook, ns: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pods = [await create(hook, ns, body) for body in bodies]
    assert all(INJECTED_ANNOTATION in p["metadata"]["annotations"] for p in pods)  # the webhook ran
    return pods


async def test_affinity_mode_stock_scheduler_places_pods_on_warm_nodes(
    nodes: RealKube, scheduler: Any
) -> None:
    scheduler({"apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration"})
    async with registered(nodes, Install(mode="affinity")) as hook:
        ns = hook.ns()
        try:
            names = [f"serve-{i}" for i in range(PODS)]
            pods = await create_all(
                hook,
                ns,
                [serving_pod(n) for n in names] + [serving_pod("nowhere", models=NOWHERE.uri, required=True)],
            )
            assert {p["spec"]["schedulerName"] for p in pods} == {"default-scheduler"}
            placed = await bound_nodes(hook, ns, names)
            assert set(placed.values()) <= set(WARM), placed
            cond = await unschedulable(hook, ns, "nowhere")
            assert cond["reason"] == "Unschedulable"
            assert "didn't match Pod's node affinity/selector" in cond["message"], cond
            await asyncio.sleep(1.0)  # retried, still never bound
            assert not read_pod(nodes, ns, "nowhere")["spec"].get("nodeName")
        finally:
            nodes.delete_all("pods", namespace=ns)


async def test_scheduler_mode_extender_places_pods_on_warm_nodes(
    nodes: RealKube, extender: str, scheduler: Any
) -> None:
    config = load_one(CONFIG.read_text())
    assert len(config["extenders"]) == 1
    config["extenders"][0]["urlPrefix"] = extender
    scheduler(config)
    async with registered(nodes, Install(mode="scheduler")) as hook:
        ns = hook.ns()
        try:
            names = [f"serve-{i}" for i in range(PODS)]
            pods = await create_all(hook, ns, [serving_pod(n) for n in names])
            assert {p["spec"]["schedulerName"] for p in pods} == {"model-locality-scheduler"}
            assert all("affinity" not in p["spec"] for p in pods)  # the extender alone steers them
            placed = await bound_nodes(hook, ns, names)
            assert set(placed.values()) <= set(WARM), placed
            async with ClientSession() as http, http.get(f"{extender}/metrics") as resp:
                metrics = await resp.text()
            assert 'model_locality_extender_requests_total{code="200",verb="prioritize"}' in metrics
        finally:
            nodes.delete_all("pods", namespace=ns)
