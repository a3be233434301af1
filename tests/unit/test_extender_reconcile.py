"""The reconciler writes a distribution's status only when it changed, at most once per interval."""

from __future__ import annotations

import asyncio
from typing import Any

from locality.identity import model_ref
from locality.kube import KubeError, NotFound
from scheduler_extender.metrics import Metrics
from scheduler_extender.nodecache import NodeCache
from scheduler_extender.reconcile import Reconciler

A = model_ref("s3://models/org/llama-3-8b")
GPU = {"nvidia.com/gpu": "8"}


class RecordingKube:
    """Our own ``Kube`` surface that the reconciler uses, recording the status writes."""

    def __init__(self, items: dict[str, dict[str, Any]]) -> None:
        self.items = items
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.fail_with: KubeError | None = None

    async def patch_distribution_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        if self.fail_with is not None:
            raise self.fail_with
        self.writes.append((name, status))
        self.items[name] = {**self.items[name], "status": status}  # what the watch would deliver
        return self.items[name]


def node(name: str, ready: bool = False) -> dict[str, Any]:
    labels = {A.label_key: "ready"} if ready else {}
    conditions = [{"type": "Ready", "status": "True"}]
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {"allocatable": GPU, "conditions": conditions},
    }


def setup(interval: float = 5.0) -> tuple[Reconciler, RecordingKube, NodeCache, list[float]]:
    now = [1000.0]
    cache = NodeCache(clock=lambda: now[0])
    cache.replace([node("a"), node("b")])
    items = {"d": {"metadata": {"name": "d", "generation": 1}, "spec": {"uri": A.uri, "replicas": 1}}}
    kube = RecordingKube(items)
    reconciler = Reconciler(
        kube,
        cache,
        items,
        trigger=asyncio.Event(),
        interval=interval,
        clock=lambda: now[0],
        wall=lambda: now[0],
        metrics=Metrics(),
        ready=lambda: True,
    )
    return reconciler, kube, cache, now


async def test_first_write_at_once_then_only_on_change() -> None:
    reconciler, kube, _, now = setup()
    assert await reconciler.reconcile_once() is None
    assert len(kube.writes) == 1
    name, status = kube.writes[0]
    assert name == "d" and status["desired"] == 1 and len(status["targets"]) == 1
    now[0] += 60
    assert await reconciler.reconcile_once() is None
    assert len(kube.writes) == 1  # nothing changed: no write


async def test_changes_within_the_interval_are_throttled_and_coalesced() -> None:
    reconciler, kube, cache, now = setup(interval=5.0)
    await reconciler.reconcile_once()
    target = kube.writes[0][1]["targets"][0]
    now[0] += 1
    cache.apply("MODIFIED", node(target, ready=True))
    retry = await reconciler.reconcile_once()
    assert retry is not None and 3.9 < retry <= 4.0 and len(kube.writes) == 1
    now[0] += 2
    other = "a" if target == "b" else "b"
    cache.apply("MODIFIED", node(other, ready=True))
    assert await reconciler.reconcile_once() is not None and len(kube.writes) == 1
    now[0] += 2.5
    assert await reconciler.reconcile_once() is None
    assert len(kube.writes) == 2  # one write carrying both changes
    assert kube.writes[1][1]["ready"] == 1 and kube.writes[1][1]["targets"] == [target]


async def test_status_metrics_and_write_failures() -> None:
    reconciler, kube, _, now = setup(interval=5.0)
    kube.fail_with = KubeError("API down", 500)
    await reconciler.reconcile_once()
    assert kube.writes == [] and reconciler.trigger.is_set()  # retried on the next pass
    kube.fail_with = NotFound("gone", 404)
    assert await reconciler.reconcile_once() == 5.0  # a failing API is not hammered either
    now[0] += 5
    await reconciler.reconcile_once()  # deleted meanwhile: not an error
    registry = reconciler.metrics.registry
    assert registry.get_sample_value("model_locality_extender_status_writes_total", {"result": "error"}) == 1
    assert registry.get_sample_value("model_locality_extender_status_writes_total", {"result": "gone"}) == 1
    assert registry.get_sample_value("model_locality_extender_distributions", {"state": "progressing"}) == 1
    assert registry.get_sample_value("model_locality_extender_distribution_targets", {"state": "queued"}) == 1
