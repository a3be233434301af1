"""agent.cluster.nodesync on the fake Kubernetes API: coalesced writes, no-op syncs, retries on 409/5xx."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from agent.cluster.nodesync import NodeSync
from agent.metrics import AgentMetrics
from locality.contract import MODELS_ANNOTATION
from locality.kube import Kube
from tests.fixtures.fakekube import FakeKube
from tests.fixtures.nodesync import A, B, StateSource, state
from tests.fixtures.polling import eventually

NODE = "node-a"


@contextlib.asynccontextmanager
async def running(sync: NodeSync) -> AsyncIterator[NodeSync]:
    await sync.reconcile()
    task = asyncio.create_task(sync.run())
    try:
        yield sync
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def patches(fake_kube: FakeKube) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in fake_kube.writes() if r.path.endswith(f"/nodes/{NODE}")]


def make_sync(kube: Kube, source: StateSource, metrics: AgentMetrics | None = None) -> NodeSync:
    return NodeSync(
        kube,
        NODE,
        source,
        metrics or AgentMetrics(),
        debounce=0.05,
        base_delay=0.01,
        max_delay=0.05,  # type: ignore[arg-type]
    )


async def test_burst_of_pokes_makes_one_write(fake_kube: FakeKube, kube: Kube) -> None:
    fake_kube.add_node(NODE, labels={"keep": "me"})
    source = StateSource()
    async with running(make_sync(kube, source)) as sync:
        assert len(patches(fake_kube)) == 1  # the start-up reconcile wrote both annotations
        source.states = [state(A, "ready"), state(B, "fetching")]
        for _ in range(50):
            sync.poke()
        await eventually(lambda: len(patches(fake_kube)) == 2)
        for _ in range(3):  # nothing changed since: pokes alone never write
            before = source.reads
            sync.poke()
            await eventually(lambda: source.reads > before, what="a sync pass after the poke")  # noqa: B023
        # Passes run one after another: the third began, so the first two ended without a write.
        assert len(patches(fake_kube)) == 2
    labels = fake_kube.get("node", NODE)["metadata"]["labels"]
    assert labels == {"keep": "me", A.label_key: "ready"}
    note = json.loads(fake_kube.get("node", NODE)["metadata"]["annotations"][MODELS_ANNOTATION])
    assert {k: v["state"] for k, v in note.items()} == {A.id: "ready", B.id: "fetching"}


async def test_conflict_and_server_errors_are_retried(fake_kube: FakeKube, kube: Kube) -> None:
    fake_kube.add_node(NODE)
    source = StateSource()
    source.states = [state(A, "ready")]
    metrics = AgentMetrics()
    fake_kube.fail_next(1, method="PATCH", path=f"/nodes/{NODE}", status=409)
    fake_kube.fail_next(2, method="PATCH", path=f"/nodes/{NODE}", status=500)
    await make_sync(kube, source, metrics).reconcile()
    assert fake_kube.get("node", NODE)["metadata"]["labels"] == {A.label_key: "ready"}
    errors = metrics.registry.get_sample_value(
        "model_locality_agent_kube_api_errors_total", {"op": "node_patch"}
    )
    assert errors == 3
    # After the 409 the node was read again before the next patch.
    methods = [r.method for r in fake_kube.requests if r.path.endswith(f"/nodes/{NODE}")]
    assert methods[:3] == ["GET", "PATCH", "GET"]


async def test_someone_else_removing_our_label_is_repaired_on_resync(fake_kube: FakeKube, kube: Kube) -> None:
    fake_kube.add_node(NODE)
    source = StateSource()
    source.states = [state(A, "ready")]
    sync = make_sync(kube, source)
    sync.resync_seconds = 0.2
    async with running(sync):
        node = fake_kube.get("node", NODE)
        node["metadata"]["labels"] = {}
        fake_kube.update("node", node)
        await eventually(
            lambda: fake_kube.get("node", NODE)["metadata"]["labels"].get(A.label_key) == "ready"
        )
