"""The time-to-ready tracker: kinds of start, samples per phase, starts counted apart, the summary
(named table rows; pods as the API server shows them, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from locality.contract import MODELS_ANNOTATION, ModelEntry
from locality.identity import model_ref
from scheduler_extender.nodes import NodeState
from scheduler_extender.startup import (
    LATE_SECONDS,
    StartupTracker,
    kind_of_start,
    parse_time,
    pod_times,
)

A = model_ref("s3://models/org/llama-8b")
B = model_ref("s3://models/org/tokenizer")
T0 = 1_800_000_000.0  # binding time of every pod here


def stamp(offset: float) -> str:
    return datetime.fromtimestamp(T0 + offset, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(
    uid: str = "u1",
    *,
    uris: tuple[str, ...] = (A.uri,),
    node: str = "n1",
    ready: float | None = None,
    waits: tuple[tuple[int, float], ...] = (),
    restarts: int = 0,
    phase: str = "Pending",
) -> dict[str, Any]:
    conditions = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp(0)}] if node else []
    if ready is not None:
        conditions.append({"type": "Ready", "status": "True", "lastTransitionTime": stamp(ready)})
    init = [
        {
            "name": "model-locality-wait" if i == 0 else f"model-locality-wait-{i + 1}",
            "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "finishedAt": stamp(at)}},
        }
        for i, (code, at) in enumerate(waits)
    ]
    return {
        "metadata": {"uid": uid, "name": uid, "annotations": {MODELS_ANNOTATION: ",".join(uris)}},
        "spec": {"nodeName": node} if node else {},
        "status": {
            "phase": phase,
            "conditions": conditions,
            "initContainerStatuses": init,
            "containerStatuses": [{"name": "serve", "restartCount": restarts}],
        },
    }


class Recorder:
    """A ``startup.Recorder`` that keeps what it is told."""

    def __init__(self) -> None:
        self.samples: list[tuple[str, str, str, float]] = []
        self.gone: list[tuple[str, str, str]] = []

    def observe(self, model: str, kind: str, phase: str, seconds: float) -> None:
        self.samples.append((model, kind, phase, seconds))

    def abandoned(self, model: str, kind: str, reason: str) -> None:
        self.gone.append((model, kind, reason))


NODES = {
    "warm": NodeState("warm", ready_labels=frozenset({A.label_key, B.label_key})),
    "fetching": NodeState("fetching", models={A.id: ModelEntry(A.uri, 10, "fetching", bytes_done=5)}),
    "half": NodeState(
        "half", ready_labels=frozenset({A.label_key}), models={B.id: ModelEntry(B.uri, 1, "queued")}
    ),
    "cold": NodeState("cold", models={A.id: ModelEntry(A.uri, 10, "failed")}),
}


@pytest.mark.parametrize(
    ("name", "node", "uris", "kind"),
    [
        ("ready on the node", "warm", (A.uri,), "warm"),
        ("all ready", "warm", (A.uri, B.uri), "warm"),
        ("in flight", "fetching", (A.uri,), "fetching"),
        ("one ready, one queued", "half", (A.uri, B.uri), "fetching"),
        ("failed there counts as cold", "cold", (A.uri,), "cold"),
        ("one cold model makes a cold start", "fetching", (A.uri, B.uri), "cold"),
        ("node unknown", "ghost", (A.uri,), "cold"),
    ],
)
def test_kind_of_start(name: str, node: str, uris: tuple[str, ...], kind: str) -> None:
    refs = [model_ref(u) for u in uris]
    got = kind_of_start(tuple(r.id for r in refs), tuple(r.label_key for r in refs), NODES.get(node))
    assert got == kind, name


def tracker(now: float = T0 + 1) -> tuple[StartupTracker, Recorder, list[float]]:
    clock = [now]
    rec = Recorder()
    return StartupTracker(NODES.get, rec, wall=lambda: clock[0], timeout=600), rec, clock


def test_a_warm_start_records_both_phases_once() -> None:
    t, rec, _ = tracker()
    t.apply("ADDED", pod(node="", ready=None))  # pending, unbound: nothing yet
    t.apply("MODIFIED", pod(node="warm"))
    t.apply("MODIFIED", pod(node="warm", waits=((0, 2),)))
    t.apply("MODIFIED", pod(node="warm", waits=((0, 2),), ready=5))
    t.apply("MODIFIED", pod(node="warm", waits=((0, 2),), ready=5))  # a later status update
    assert rec.samples == [(A.id, "warm", "wait", 2.0), (A.id, "warm", "ready", 5.0)]
    assert not t.tracks


def test_multi_model_pod_samples_every_model_with_the_pod_kind() -> None:
    t, rec, _ = tracker()
    t.apply("MODIFIED", pod(node="half", uris=(A.uri, B.uri), waits=((0, 30), (0, 40)), ready=41))
    assert rec.samples == [
        (A.id, "fetching", "wait", 40.0),  # the last wait container
        (B.id, "fetching", "wait", 40.0),
        (A.id, "fetching", "ready", 41.0),
        (B.id, "fetching", "ready", 41.0),
    ]


@pytest.mark.parametrize(
    ("name", "event", "last", "reason"),
    [
        ("restarted before Ready", "MODIFIED", pod(node="cold", restarts=1), "restarted"),
        ("Ready only after a restart", "MODIFIED", pod(node="cold", restarts=1, ready=90), "restarted"),
        ("failed", "MODIFIED", pod(node="cold", phase="Failed"), "failed"),
        ("deleted before Ready", "DELETED", pod(node="cold"), "deleted"),
    ],
)
def test_starts_that_never_end_ready_are_counted_apart(
    name: str, event: str, last: dict[str, Any], reason: str
) -> None:
    t, rec, _ = tracker()
    t.apply("MODIFIED", pod(node="cold"))
    t.apply(event, last)
    assert rec.samples == [], name
    assert rec.gone == [(A.id, "cold", reason)], name
    assert t.summary(A.id)["abandoned"][reason] == 1


def test_a_failed_wait_container_records_no_wait_sample() -> None:
    t, rec, _ = tracker()
    t.apply("MODIFIED", pod(node="cold", waits=((1, 30),)))
    assert rec.samples == [] and A.id in next(iter(t.tracks.values())).models


def test_not_ready_within_the_timeout() -> None:
    t, rec, clock = tracker()
    t.apply("MODIFIED", pod(node="cold"))
    clock[0] = T0 + 601
    t.sweep(clock[0])
    assert rec.gone == [(A.id, "cold", "not_ready")]
    t.apply("MODIFIED", pod(node="cold", ready=700))  # Ready after all: not a sample any more
    assert rec.samples == []


def test_a_pod_bound_before_we_watched_is_not_classified() -> None:
    t, rec, _ = tracker(now=T0 + LATE_SECONDS + 5)
    t.apply("ADDED", pod(node="cold"))
    t.apply("MODIFIED", pod(node="cold", ready=LATE_SECONDS + 10))
    assert rec.samples == [] and rec.gone == []


def test_pods_without_models_are_ignored() -> None:
    t, rec, _ = tracker()
    t.apply("ADDED", pod(uris=(), node="warm", ready=1))
    assert rec.samples == [] and not t.tracks


def test_summary_and_cold_seconds() -> None:
    t, _, _ = tracker()
    for i, seconds in enumerate([60, 80, 100, 120, 300]):
        t.apply("MODIFIED", pod(f"c{i}", node="cold", ready=seconds))
    t.apply("MODIFIED", pod("w", node="warm", ready=3))
    summary = t.summary(A.id)
    assert summary["ready"]["cold"] == {"count": 5, "p50": 100.0, "p90": 300.0}
    assert summary["ready"]["warm"] == {"count": 1, "p50": 3.0, "p90": 3.0}
    assert summary["ready"]["fetching"] == {"count": 0, "p50": None, "p90": None}
    assert t.cold_seconds(A.id) == 300.0
    assert t.cold_seconds(B.id) is None  # no cold samples: the caller's default


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("2026-01-01T00:00:00Z", 1767225600.0), ("", None), (None, None), ("yesterday", None), (5, None)],
)
def test_parse_time(raw: object, expected: float | None) -> None:
    assert parse_time(raw) == expected


def test_pod_times_reads_junk_without_raising() -> None:
    junk = {"metadata": {"annotations": {MODELS_ANNOTATION: A.uri}}, "status": {"conditions": "x"}, "spec": 3}
    times = pod_times(junk)
    assert times.models == (A.id,) and times.node == "" and times.bound_at is None
