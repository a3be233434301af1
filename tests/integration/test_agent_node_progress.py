"""The agent's time-to-ready writes (agent.cluster.nodesync + labels): fetch progress and the
measured fetch rate reach the Node only on a material change, progress at most once per
``progress_interval`` (a fake clock; the fake API counts the writes)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from agent.cluster.labels import NodeMetadata, desired_metadata
from agent.cluster.nodesync import NodeSync
from agent.lifecycle.modelstate import FetchRate, ModelState
from agent.metrics import AgentMetrics
from locality.contract import FETCH_RATE_ANNOTATION, MODELS_ANNOTATION
from locality.kube import Kube
from tests.fixtures.fakekube import FakeKube
from tests.fixtures.nodesync import A, StateSource

NODE = "node-a"
GB = 10**9


def fetching(done: int | None) -> ModelState:
    return ModelState(A.id, A.uri, A.label_key, "fetching", bytes=GB, bytes_done=done)


def written(done: int | None = None, rate: str | None = None) -> NodeMetadata:
    entry: dict[str, Any] = {"uri": A.uri, "bytes": GB, "state": "fetching"}
    if done is not None:
        entry["bytes_done"] = done
    annotations = {MODELS_ANNOTATION: json.dumps({A.id: entry})}
    if rate is not None:
        annotations[FETCH_RATE_ANNOTATION] = rate
    return NodeMetadata(annotations=annotations)


def shown_done(meta: NodeMetadata) -> int | None:
    entry = json.loads(meta.annotations[MODELS_ANNOTATION])[A.id]
    return entry.get("bytes_done")


@pytest.mark.parametrize(
    ("name", "done", "before", "progress", "expected"),
    [
        ("first 10% is written", GB // 10, written(), True, GB // 10),
        ("under 10% of the model is not yet", GB // 20, written(), True, None),
        ("5% more keeps what the Node shows", 55 * GB // 100, written(GB // 2), True, GB // 2),
        ("10% more is written", 6 * GB // 10, written(GB // 2), True, 6 * GB // 10),
        ("not now: the Node keeps its value", 9 * GB // 10, written(GB // 2), False, GB // 2),
        ("no Node read yet", 3 * GB // 10, None, True, 3 * GB // 10),
    ],
)
def test_progress_is_written_on_material_change_only(
    name: str, done: int, before: NodeMetadata | None, progress: bool, expected: int | None
) -> None:
    meta = desired_metadata([fetching(done)], 0, 1, written=before, progress=progress)
    assert shown_done(meta) == expected, name


@pytest.mark.parametrize(
    ("name", "rate", "before", "expected"),
    [
        ("nothing measured: no key", None, None, None),
        ("first measurement", 734_003_200.0, None, "730000000"),
        ("within 25%: the Node keeps its value", 800_000_000.0, "730000000", None),
        ("30% faster", 950_000_000.0, "730000000", "950000000"),
    ],
)
def test_rate_is_written_on_material_change_only(
    name: str, rate: float | None, before: str | None, expected: str | None
) -> None:
    meta = desired_metadata([], 0, 1, written=written(rate=before), rate=rate)
    assert meta.annotations.get(FETCH_RATE_ANNOTATION) == expected, name


def test_fetch_rate_ignores_small_fetches_and_averages() -> None:
    rate = FetchRate()
    rate.record(10 * 2**20, 5.0)  # 10 MiB: latency, not bandwidth
    rate.record(GB, 0.5)  # half a second: too short to measure
    assert rate.value is None
    rate.record(GB, 2.0)
    rate.record(GB, 1.0)
    assert rate.value == pytest.approx(0.5 * 1e9 + 0.5 * 5e8)


def node_writes(fake_kube: FakeKube) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in fake_kube.writes() if r.path.endswith(f"/nodes/{NODE}")]


async def test_progress_writes_are_bounded_in_time(fake_kube: FakeKube, kube: Kube) -> None:
    fake_kube.add_node(NODE)
    now = [0.0]
    source = StateSource([fetching(0)])
    sync = NodeSync(
        kube, NODE, source, AgentMetrics(), progress_interval=30.0, clock=lambda: now[0]  # type: ignore[arg-type]
    )
    await sync.reconcile()  # the state itself: written at once
    assert len(node_writes(fake_kube)) == 1

    def progress(done: int, at: float) -> None:
        source.states = [replace(source.states[0], bytes_done=done)]
        now[0] = at

    progress(GB // 2, 5.0)
    await sync.reconcile()
    assert len(node_writes(fake_kube)) == 1, "50% done 5 s after the last write: not yet"
    progress(GB // 2, 31.0)
    await sync.reconcile()
    assert len(node_writes(fake_kube)) == 2
    annotations = node_writes(fake_kube)[-1]["metadata"]["annotations"]
    assert f'"bytes_done":{GB // 2}' in annotations[MODELS_ANNOTATION]
    progress(55 * GB // 100, 90.0)
    await sync.reconcile()
    assert len(node_writes(fake_kube)) == 2, "5% more is not material"
    source.fetch_rate.record(2 * GB, 4.0)  # a fetch finished: a rate is measured
    await sync.reconcile()
    assert node_writes(fake_kube)[-1]["metadata"]["annotations"] == {FETCH_RATE_ANNOTATION: "500000000"}
    source.states = [ModelState(A.id, A.uri, A.label_key, "ready", bytes=GB)]
    now[0] = 91.0
    await sync.reconcile()  # a state change is written at once, progress gone from the entry
    last = node_writes(fake_kube)[-1]["metadata"]
    assert last["labels"] == {A.label_key: "ready"}
    assert "bytes_done" not in last["annotations"][MODELS_ANNOTATION]
