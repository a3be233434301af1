"""Locality scoring and filtering: named table rows, ranking assertions, the node index."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from locality.contract import LOCALITY_ANNOTATION, MODELS_ANNOTATION, ModelEntry, pod_models
from locality.identity import model_ref
from scheduler_extender.index import NodeIndex
from scheduler_extender.nodes import NodeState, node_state
from scheduler_extender.scoring import (
    MAX_SCORE,
    filter_reason,
    locality_score,
    model_weights,
    score_node,
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
    ("name", "weights", "ready", "expected"),
    [
        ("nothing requested", (), (), 0),
        ("all ready", (3, 1), (True, True), 10),
        ("floor, not round", (2, 1), (True, False), 6),
        ("tiny share floors to zero", (1000, 1), (False, True), 0),
    ],
)
def test_locality_score_formula(
    name: str, weights: tuple[int, ...], ready: tuple[bool, ...], expected: int
) -> None:
    assert locality_score(weights, ready) == expected


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
