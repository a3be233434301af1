"""The node cache: events update the index, only meaningful changes wake the reconciler,
garbage annotations are logged once per node version."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest

from locality.contract import MODELS_ANNOTATION, pod_models
from locality.identity import model_ref
from scheduler_extender.nodecache import NodeCache

A = model_ref("s3://models/org/llama-3-8b")


def node(name: str, rv: str, labels: dict[str, str] | None = None, **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": rv, "labels": labels or {}, "annotations": annotations},
        "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": rv}]},
    }


def test_events_update_index_and_wake_only_on_meaningful_change() -> None:
    wakes: list[int] = []
    now = [100.0]
    cache = NodeCache(clock=lambda: now[0], on_change=lambda: wakes.append(1))
    assert not cache.synced and cache.age() == 0.0
    cache.replace([node("a", "1"), node("b", "1")])
    assert cache.synced and len(cache) == 2 and len(wakes) == 1
    now[0] = 103.0
    assert cache.age() == 3.0

    cache.apply("MODIFIED", node("a", "2"))  # a heartbeat: only resourceVersion and times moved
    assert len(wakes) == 1
    cache.apply("MODIFIED", node("a", "3", {A.label_key: "ready"}))
    assert len(wakes) == 2
    assert cache.index.scores(pod_models({MODELS_ANNOTATION: A.uri}), ["a", "b"]) == [10, 0]
    cache.apply("DELETED", node("a", "4"))
    assert len(cache) == 1 and len(wakes) == 3
    cache.apply("ADDED", {"metadata": {}})  # nameless: ignored, not fatal
    assert len(cache) == 1


def test_replace_drops_nodes_missing_from_a_relist() -> None:
    cache = NodeCache()
    cache.replace([node("a", "1", {A.label_key: "ready"}), node("b", "1")])
    cache.replace([node("b", "2")])
    assert [s.name for s in cache.index] == ["b"]
    assert cache.index.holders(A.label_key) == frozenset()


def test_garbage_annotation_logged_once_per_version(caplog: pytest.LogCaptureFixture) -> None:
    cache = NodeCache()
    bad = node("a", "1", **{MODELS_ANNOTATION: "{nope"})
    with caplog.at_level(logging.WARNING, logger="scheduler_extender.nodecache"):
        cache.apply("ADDED", bad)
        cache.replace([copy.deepcopy(bad)])  # a re-list delivers the same version again
        cache.apply("MODIFIED", node("a", "2", **{MODELS_ANNOTATION: "{still nope"}))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert all("node a" in m and "not JSON" in m for m in messages)
    assert cache.index.get("a") is not None  # the node itself still counts
