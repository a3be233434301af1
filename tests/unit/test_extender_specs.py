"""Distribution spec validation, desired status and per-node views (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from locality.contract import ModelEntry
from locality.identity import model_ref
from scheduler_extender.index import NodeIndex
from scheduler_extender.nodes import NodeState
from scheduler_extender.reconcile import needs_write
from scheduler_extender.specs import InvalidSpec, desired_status, node_view, parse_spec

A = model_ref("s3://models/org/llama-3-8b")
NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"


@pytest.mark.parametrize(
    ("name", "spec", "replicas", "selector"),
    [
        ("defaults", {"uri": A.uri}, "all", {}),
        ("count", {"uri": A.uri, "replicas": 3}, 3, {}),
        (
            "selector",
            {"uri": A.uri, "nodeSelector": {"nvidia.com/gpu.present": "true"}},
            "all",
            {"nvidia.com/gpu.present": "true"},
        ),
        ("null selector", {"uri": A.uri, "nodeSelector": None}, "all", {}),
        ("empty label value", {"uri": A.uri, "nodeSelector": {"pool": ""}}, "all", {"pool": ""}),
    ],
)
def test_parse_spec_accepts(
    name: str, spec: dict[str, Any], replicas: object, selector: dict[str, str]
) -> None:
    parsed = parse_spec(spec)
    assert (parsed.ref, parsed.replicas, dict(parsed.node_selector)) == (A, replicas, selector)


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("prefix upper case", {"uri": A.uri, "nodeSelector": {"Example.com/x": "y"}}, "label key"),
        ("two slashes", {"uri": A.uri, "nodeSelector": {"a/b/c": "y"}}, "label key"),
        ("empty prefix", {"uri": A.uri, "nodeSelector": {"/c": "y"}}, "label key"),
        ("value with slash", {"uri": A.uri, "nodeSelector": {"a": "b/c"}}, "label value"),
        ("huge replicas", {"uri": A.uri, "replicas": 10**9}, "larger"),
        ("uri not a string", {"uri": 5}, "non-empty string"),
    ],
)
def test_parse_spec_rejects(name: str, spec: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        parse_spec(spec)


SHA = "9a7b3c1d2e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b"


@pytest.mark.parametrize(
    ("spec", "revision"),
    [
        pytest.param({"uri": A.uri}, None, id="omitted: the latest"),
        pytest.param({"uri": A.uri, "revision": None}, None, id="null"),
        pytest.param({"uri": A.uri, "revision": SHA}, SHA, id="commit sha"),
        pytest.param({"uri": A.uri, "revision": "9a7b3c1"}, "9a7b3c1", id="prefix"),
        pytest.param({"uri": A.uri, "revision": "v1.0_rc-2"}, "v1.0_rc-2", id="tag-like"),
    ],
)
def test_parse_spec_revision(spec: dict[str, Any], revision: str | None) -> None:
    parsed = parse_spec(spec)
    assert parsed.revision == revision
    assert parse_spec(parsed.as_dict()) == parsed  # what the REST writes into the object round-trips
    assert ("revision" in parsed.as_dict()) == (revision is not None)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("a b", id="space"),
        pytest.param("../x", id="slash"),
        pytest.param("a" * 129, id="too long"),
        pytest.param(7, id="number"),
        pytest.param(["x"], id="list"),
    ],
)
def test_parse_spec_rejects_a_bad_revision(value: object) -> None:
    with pytest.raises(InvalidSpec, match="revision must be 1-128 characters"):
        parse_spec({"uri": A.uri, "revision": value})


def gpu(name: str, **kw: Any) -> NodeState:
    return NodeState(name, gpus=8, **kw)


def dist(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "d", "generation": 3}, "spec": spec}
    if status is not None:
        obj["status"] = status
    return obj


def test_desired_status_counts_and_condition() -> None:
    index = NodeIndex([gpu("a", ready_labels=frozenset({A.label_key})), gpu("b"), gpu("c")])
    status = desired_status(dist({"uri": A.uri, "replicas": 2}), index, NOW)
    assert "a" in status["targets"] and len(status["targets"]) == 2  # the holder is chosen
    assert (status["desired"], status["ready"], status["observedGeneration"]) == (2, 1, 3)
    assert status["conditions"][0] | {"message": ""} == {
        "type": "Ready",
        "status": "False",
        "reason": "Fetching",
        "message": "",
        "observedGeneration": 3,
        "lastTransitionTime": NOW,
    }


def test_desired_status_stable_means_no_write() -> None:
    index = NodeIndex([gpu("a"), gpu("b")])
    first = desired_status(dist({"uri": A.uri}), index, NOW)
    again = desired_status(dist({"uri": A.uri}, first), index, LATER)
    assert again == first and not needs_write(first, again)  # transition time kept while unchanged


def test_desired_status_not_enough_nodes_then_ready() -> None:
    index = NodeIndex([gpu("a", ready_labels=frozenset({A.label_key}))])
    status = desired_status(dist({"uri": A.uri, "replicas": 2}), index, NOW)
    assert status["conditions"][0]["reason"] == "NotEnoughNodes" and status["targets"] == ["a"]
    status = desired_status(dist({"uri": A.uri, "replicas": 1}, status), index, LATER)
    cond = status["conditions"][0]
    assert (cond["status"], cond["reason"], cond["lastTransitionTime"]) == ("True", "TargetsReady", LATER)


def test_desired_status_invalid_spec() -> None:
    status = desired_status(dist({"uri": "ftp://x"}), NodeIndex([gpu("a")]), NOW)
    assert status["targets"] == [] and status["conditions"][0]["reason"] == "InvalidSpec"


def test_node_view_states() -> None:
    index = NodeIndex(
        [
            gpu("ready", ready_labels=frozenset({A.label_key}), models={A.id: ModelEntry(A.uri, 5, "ready")}),
            gpu("fetching", models={A.id: ModelEntry(A.uri, 5, "fetching")}),
            gpu("failed", models={A.id: ModelEntry(A.uri, None, "failed")}),
            gpu("silent"),
            gpu("bystander", ready_labels=frozenset({A.label_key})),
        ]
    )
    view = node_view(A.id, A.label_key, ["ready", "fetching", "failed", "silent", "unknown"], index)
    assert view == {
        "bystander": {"state": "ready", "bytes": None},
        "failed": {"state": "failed", "bytes": None},
        "fetching": {"state": "fetching", "bytes": 5},
        "ready": {"state": "ready", "bytes": 5},
        "silent": {"state": "queued", "bytes": None},
        "unknown": {"state": "queued", "bytes": None},
    }
