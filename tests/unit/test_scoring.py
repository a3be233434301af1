"""Locality scoring and filtering: named table rows, ranking assertions, the node index."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from locality.contract import LOCALITY_ANNOTATION, MODELS_ANNOTATION, ModelEntry, pod_models
from locality.identity import ModelRef, model_ref
from scheduler_extender.index import NodeIndex
from scheduler_extender.nodes import NodeState, node_state
from scheduler_extender.scoring import (
    DEFAULT_RATE,
    MAX_SCORE,
    filter_reason,
    model_weights,
    reference_rate,
    score_node,
    seconds_until_ready,
    time_score,
)

A = model_ref("s3://models/org/llama-70b")
B = model_ref("s3://models/org/tokenizer-small")
C = model_ref("https://example.com/weights/mistral.safetensors")
GB = 10**9


def ann(*uris: str, locality: str | None = None) -> dict[str, str]:
    out = {MODELS_ANNOTATION: ",".join(uris)}
    if locality is not None:
        out[LOCALITY_ANNOTATION] = locality
    return out


@dataclass(frozen=True)
class Row:
    name: str
    annotations: dict[str, object] | None
    ready: frozenset[str]
    sizes: dict[str, int] = field(default_factory=dict)
    expected: int = 0


ROWS = [
    Row("no annotation", None, frozenset({A.label_key})),
    Row("other annotations only", {"team": "x"}, frozenset({A.label_key})),
    Row("empty models annotation", ann(""), frozenset({A.label_key})),
    Row("unknown model, nothing ready", ann(A.uri), frozenset()),
    Row("single model ready", ann(A.uri), frozenset({A.label_key}), expected=10),
    Row("single model ready, size unknown", ann(A.uri), frozenset({A.label_key}), {}, 10),
    Row("other model ready only", ann(A.uri), frozenset({B.label_key})),
    Row(
        "big ready, small missing", ann(A.uri, B.uri), frozenset({A.label_key}), {A.id: 140 * GB, B.id: GB}, 9
    ),
    Row(
        "small ready, big missing", ann(A.uri, B.uri), frozenset({B.label_key}), {A.id: 140 * GB, B.id: GB}, 0
    ),
    Row("two of two ready", ann(A.uri, B.uri), frozenset({A.label_key, B.label_key}), {A.id: GB}, 10),
    Row("sizes unknown: equal weights", ann(A.uri, B.uri), frozenset({A.label_key}), {}, 5),
    Row(
        "one size unknown: mean of known",
        ann(A.uri, B.uri, C.uri),
        frozenset({C.label_key}),
        {A.id: 4 * GB, B.id: 2 * GB},
        3,
    ),
    Row("duplicate URI counts once", ann(A.uri, A.uri + "/", B.uri), frozenset({A.label_key}), {}, 5),
    Row("garbage URI ignored, good one ready", ann("ftp://x/y", A.uri), frozenset({A.label_key}), {}, 10),
    Row("only garbage URIs", ann("not a uri", "s3://"), frozenset({A.label_key})),
    Row("annotation not a string", {MODELS_ANNOTATION: 42}, frozenset({A.label_key})),
    Row(
        "zero size reported: treated unknown",
        ann(A.uri, B.uri),
        frozenset({A.label_key}),
        {A.id: 0, B.id: 0},
        5,
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_score_table(row: Row) -> None:
    pod = pod_models(row.annotations)
    score = score_node(pod, row.ready, row.sizes)
    assert isinstance(score, int)
    assert score == row.expected


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_index_scores_match_pure_function(row: Row) -> None:
    """The index's fast path computes the same numbers as ``score_node``."""
    models = {mid: ModelEntry(uri="", bytes=size, state="ready") for mid, size in row.sizes.items()}
    index = NodeIndex([NodeState("warm", ready_labels=row.ready), NodeState("sizer", models=models)])
    pod = pod_models(row.annotations)
    expected = score_node(pod, row.ready, {k: v for k, v in row.sizes.items() if v > 0})
    assert index.scores(pod, ["warm", "unknown-node"]) == [expected, 0]


def test_ranking_more_ready_bytes_never_lower() -> None:
    sizes = {A.id: 30 * GB, B.id: 10 * GB, C.id: 5 * GB}
    pod = pod_models(ann(A.uri, B.uri, C.uri))
    ready_sets = {
        "none": frozenset(),
        "c": frozenset({C.label_key}),
        "b": frozenset({B.label_key}),
        "b+c": frozenset({B.label_key, C.label_key}),
        "a": frozenset({A.label_key}),
        "a+c": frozenset({A.label_key, C.label_key}),
        "all": frozenset({A.label_key, B.label_key, C.label_key}),
    }
    scores = {k: score_node(pod, v, sizes) for k, v in ready_sets.items()}
    order = list(ready_sets)  # listed by increasing ready bytes
    assert [scores[k] for k in order] == sorted(scores[k] for k in order)
    assert scores["all"] == MAX_SCORE
    assert max(v for k, v in scores.items() if k != "all") < MAX_SCORE  # only complete scores 10
    assert scores["none"] == 0 < scores["a"]


@pytest.mark.parametrize(
    ("name", "case", "expected"),
    [
        ("nothing missing is ready", (0, 10, 1, 1), 10),
        ("nothing requested", (0, 0, 1, 1), 10),
        ("cold at the reference rate", (10, 10, 100, 100), 0),
        ("same rates: share of bytes, floored", (1, 3, 100, 100), 6),
        ("90% through a fetch", (1, 10, 100, 100), 9),
        ("99.9% through a fetch is still not ready", (1, 1000, 100, 100), 9),
        ("cold, twice the reference rate", (10, 10, 200, 100), 5),
        ("cold, ten times the reference rate", (10, 10, 1000, 100), 9),
        ("cold, slower than the reference", (10, 10, 50, 100), 0),
        ("half fetched on a slow node", (5, 10, 50, 100), 0),
        ("half fetched on a fast node", (5, 10, 400, 100), 8),
        ("no rate: nothing to predict", (10, 10, 0, 100), 0),
    ],
)
def test_time_score_formula(name: str, case: tuple[int, int, int, int], expected: int) -> None:
    """case = (missing bytes, total bytes, node rate, reference rate)."""
    assert time_score(*case) == expected, name


@pytest.mark.parametrize(
    ("name", "rates", "expected"),
    [
        ("nothing measured: the default", [], DEFAULT_RATE),
        ("one node", [500], 500),
        ("the slowest node", [400, 500, 600], 400),
        ("one broken node does not set the scale", [1, 800, 800, 800], 200),
    ],
)
def test_reference_rate(name: str, rates: list[int], expected: int) -> None:
    assert reference_rate(rates) == expected, name


def fetching(model: ModelRef, size: int, done: int | None) -> ModelEntry:
    return ModelEntry(model.uri, size, "fetching", bytes_done=done)


@dataclass(frozen=True)
class TimeRow:
    """One node for a pod asking for A (and B): ready labels, fetches in progress, its rate."""

    name: str
    uris: tuple[str, ...]
    ready: frozenset[str] = frozenset()
    models: dict[str, ModelEntry] = field(default_factory=dict)
    rate: int | None = None
    expected: int = 0
    seconds: float = 0.0


MB = 10**6
R = 100 * MB  # the reference rate of these rows
TIME_ROWS = [
    TimeRow("ready", (A.uri,), frozenset({A.label_key}), expected=10, seconds=0),
    TimeRow("cold, unmeasured", (A.uri,), expected=0, seconds=10 * GB / R),
    TimeRow("90% fetched", (A.uri,), models={A.id: fetching(A, 10 * GB, 9 * GB)}, expected=9, seconds=GB / R),
    TimeRow("10% fetched", (A.uri,), models={A.id: fetching(A, 10 * GB, GB)}, expected=1, seconds=9 * GB / R),
    TimeRow("no progress reported", (A.uri,), models={A.id: fetching(A, 10 * GB, None)}, seconds=100),
    TimeRow("cold, 4x the reference rate", (A.uri,), rate=4 * R, expected=7, seconds=25),
    TimeRow("cold, 2x the reference rate", (A.uri,), rate=2 * R, expected=5, seconds=50),
    TimeRow("cold, half the reference rate", (A.uri,), rate=R // 2, expected=0, seconds=200),
    TimeRow(
        "90% fetched on a slow node", (A.uri,), models={A.id: fetching(A, 10 * GB, 9 * GB)}, rate=R // 2,
        expected=8, seconds=20,
    ),
    TimeRow("A ready, B cold", (A.uri, B.uri), frozenset({A.label_key}), expected=9, seconds=GB / R),
    TimeRow(
        "A ready, B half fetched", (A.uri, B.uri), frozenset({A.label_key}),
        models={B.id: fetching(B, GB, GB // 2)}, expected=9, seconds=GB / 2 / R,
    ),
    TimeRow(
        "B ready, A 90% fetched", (A.uri, B.uri), frozenset({B.label_key}),
        models={A.id: fetching(A, 10 * GB, 9 * GB)}, expected=9, seconds=GB / R,
    ),
    TimeRow("B ready only", (A.uri, B.uri), frozenset({B.label_key}), expected=0, seconds=10 * GB / R),
]  # fmt: skip
TIME_SIZES = {A.id: 10 * GB, B.id: GB}


@pytest.mark.parametrize("row", TIME_ROWS, ids=lambda r: r.name)
def test_time_table(row: TimeRow) -> None:
    pod = pod_models(ann(*row.uris))
    got = score_node(pod, row.ready, TIME_SIZES, models=row.models, rate=row.rate, reference=R)
    assert got == row.expected
    seconds = seconds_until_ready(pod, row.ready, row.models, TIME_SIZES, rate=row.rate or R)
    assert seconds == pytest.approx(row.seconds)


@pytest.mark.parametrize("row", TIME_ROWS, ids=lambda r: r.name)
def test_index_time_scores_match_pure_function(row: TimeRow) -> None:
    """The index (holder bitmasks, fetches in progress, precomputed cold scores) agrees with
    ``score_node``; the slowest measured node sets the reference rate R."""
    sizer = NodeState("sizer", models={m: ModelEntry("", b, "ready") for m, b in TIME_SIZES.items()})
    node = NodeState("n", ready_labels=row.ready, models=row.models, fetch_rate=row.rate)
    index = NodeIndex([sizer, node, NodeState("slowest", fetch_rate=R)])
    assert index.reference == min(R, row.rate or R)
    pod = pod_models(ann(*row.uris))
    expected = score_node(
        pod, row.ready, TIME_SIZES, models=row.models, rate=row.rate, reference=index.reference
    )
    slowest = time_score(1, 1, R, index.reference)  # holds nothing: by its rate alone
    assert index.scores(pod, ["n", "slowest", "ghost"]) == [expected, slowest, 0]
    if index.reference == R:
        assert expected == row.expected


def test_ranking_by_time() -> None:
    """Ready first, then a node 90% through a fetch above a cold one, a fast cold node above a slow one."""
    pod = pod_models(ann(A.uri))
    index = NodeIndex(
        [
            NodeState("ready", ready_labels=frozenset({A.label_key}), fetch_rate=R),
            NodeState("ninety", models={A.id: fetching(A, 10 * GB, 9 * GB)}, fetch_rate=R),
            NodeState("fast-cold", fetch_rate=3 * R),
            NodeState("slow-cold", fetch_rate=R),
            NodeState("unmeasured-cold"),
        ]
    )
    names = ["slow-cold", "unmeasured-cold", "fast-cold", "ninety", "ready"]
    scores = dict(zip(names, index.scores(pod, names), strict=True))
    assert scores["ready"] == 10
    assert scores["ready"] > scores["ninety"] > scores["fast-cold"] > scores["slow-cold"], scores
    assert scores["unmeasured-cold"] == scores["slow-cold"] == 0  # unmeasured: assumed at R


def test_index_tracks_rates_and_progress() -> None:
    pod = pod_models(ann(A.uri))
    index = NodeIndex([NodeState("a", fetch_rate=R), NodeState("b", models={A.id: fetching(A, GB, GB // 2)})])
    assert index.scores(pod, ["a", "b"]) == [0, 5]
    index.upsert(NodeState("a", fetch_rate=4 * R))  # "a" measured faster: the reference moves too
    assert index.reference == 4 * R
    assert index.scores(pod, ["a", "b"]) == [0, 5]
    index.upsert(NodeState("c", fetch_rate=R))
    assert index.scores(pod, ["a", "b", "c"]) == [7, 5, 0]
    index.remove("b")
    index.remove("c")
    assert index.scores(pod, ["a", "b"]) == [0, 0]


def test_model_weights_fallbacks() -> None:
    assert model_weights([A, B], {}) == (1, 1)
    assert model_weights([A, B], {A.id: 10}) == (10, 10)
    assert model_weights([A, B, C], {A.id: 10, B.id: 5}) == (10, 5, 7)


@pytest.mark.parametrize(
    ("name", "annotations", "ready", "passes", "mentions"),
    [
        ("preferred passes without the model", ann(A.uri), frozenset(), True, None),
        ("default is preferred", ann(A.uri, locality=None), frozenset(), True, None),
        ("unknown locality value means preferred", ann(A.uri, locality="always"), frozenset(), True, None),
        ("required with model ready", ann(A.uri, locality="required"), frozenset({A.label_key}), True, None),
        ("required, case-insensitive", ann(A.uri, locality=" Required "), frozenset(), False, A.uri),
        (
            "required missing one of two",
            ann(A.uri, B.uri, locality="required"),
            frozenset({A.label_key}),
            False,
            B.uri,
        ),
        (
            "required with a garbage URI fails everywhere",
            ann("ftp://x", A.uri, locality="required"),
            frozenset({A.label_key}),
            False,
            "ftp://x",
        ),
        ("required without models passes", {LOCALITY_ANNOTATION: "required"}, frozenset(), True, None),
    ],
)
def test_filter_table(
    name: str, annotations: dict[str, str], ready: frozenset[str], passes: bool, mentions: str | None
) -> None:
    reason = filter_reason(pod_models(annotations), ready)
    assert (reason is None) is passes
    if mentions is not None:
        assert reason is not None and mentions in reason and reason.startswith("model-locality: ")


def test_index_filter_keeps_order_and_reasons_every_drop() -> None:
    index = NodeIndex(
        [
            NodeState("n1", ready_labels=frozenset({A.label_key})),
            NodeState("n2"),
            NodeState("n3", ready_labels=frozenset({A.label_key, B.label_key})),
        ]
    )
    pod = pod_models(ann(A.uri, locality="required"))
    passed, failed = index.filter(pod, ["n3", "ghost", "n2", "n1"])
    assert passed == ["n3", "n1"]
    assert set(failed) == {"ghost", "n2"}
    assert all(A.uri in r for r in failed.values())


def test_index_updates_holders_and_sizes() -> None:
    def node(name: str, ready: bool, size: int) -> NodeState:
        labels = frozenset({A.label_key}) if ready else frozenset()
        return NodeState(name, ready_labels=labels, models={A.id: ModelEntry(A.uri, size, "ready")})

    index = NodeIndex([node("n1", True, 100), node("n2", False, 300)])
    assert index.sizes[A.id] == 300
    assert index.holders(A.label_key) == {"n1"}
    index.remove("n2")
    assert index.sizes[A.id] == 100
    index.upsert(node("n1", False, 100))
    assert index.holders(A.label_key) == frozenset()
    index.replace_all([node("n9", True, 50)])
    assert len(index) == 1 and index.sizes == {A.id: 50} and index.holders(A.label_key) == {"n9"}


def node_obj(**annotations: str) -> dict[str, object]:
    return {
        "metadata": {
            "name": "gpu-1",
            "resourceVersion": "7",
            "labels": {A.label_key: "ready", B.label_key: "fetching", "kubernetes.io/os": "linux"},
            "annotations": annotations,
        },
        "spec": {"unschedulable": True},
        "status": {
            "allocatable": {"nvidia.com/gpu": "8"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def test_node_state_parses_contract_fields() -> None:
    models = {
        A.id: {"uri": A.uri, "bytes": 5 * GB, "state": "ready"},
        B.id: {"uri": B.uri, "bytes": 7, "state": "fetching"},
    }
    state = node_state(
        node_obj(
            **{
                MODELS_ANNOTATION: json.dumps(models),
                "model-locality.io/cache": json.dumps({"used_bytes": 10, "quota_bytes": 25}),
            }
        )
    )
    assert state.ready_labels == {A.label_key}
    assert state.sizes() == {A.id: 5 * GB, B.id: 7}
    assert (state.schedulable, state.ready, state.gpus, state.free_bytes) == (False, True, 8, 15)
    assert state.problem is None and state.resource_version == "7"


@pytest.mark.parametrize(
    "garbage",
    ["{not json", "[1, 2]", '"x"', json.dumps({"abc": "ready"}), json.dumps({"abc": {"state": "bogus"}})],
    ids=["broken json", "list", "string", "entry not object", "unknown state"],
)
def test_node_state_garbage_annotation_is_no_models(garbage: str) -> None:
    state = node_state(node_obj(**{MODELS_ANNOTATION: garbage}))
    assert state.models == {}
    assert state.problem is not None
    assert state.ready_labels == {A.label_key}  # labels still count


def test_node_state_needs_a_name() -> None:
    with pytest.raises(ValueError, match=r"metadata\.name"):
        node_state({"metadata": {}})
