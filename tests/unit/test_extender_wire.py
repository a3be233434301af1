"""Wire encoding and the index's fast paths agree with the plain definitions."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from locality.contract import LOCALITY_ANNOTATION, MODELS_ANNOTATION, ModelEntry, pod_models
from locality.identity import model_ref
from scheduler_extender.index import NodeIndex
from scheduler_extender.nodes import NodeState
from scheduler_extender.scoring import filter_reason, score_node
from scheduler_extender.wire import (
    ExtenderArgs,
    encode_filter,
    encode_prioritize,
    filter_reply,
    prioritize_reply,
)

MODELS = [model_ref(f"s3://models/org/m{i}") for i in range(4)]
NODE_NAMES = [f"n{i}" for i in range(8)]


@settings(max_examples=200, deadline=None)
@given(names=st.lists(st.text(max_size=12), max_size=20), data=st.data())
def test_encode_prioritize_is_json_of_the_reply(names: list[str], data: st.DataObject) -> None:
    scores = data.draw(st.lists(st.integers(0, 10), min_size=len(names), max_size=len(names)))
    encoded = encode_prioritize(names, scores)
    assert json.loads(encoded) == prioritize_reply(names, scores)


@settings(max_examples=200, deadline=None)
@given(
    names=st.lists(st.text(max_size=12), max_size=20, unique=True),
    reasons=st.lists(st.text(max_size=30), min_size=1, max_size=3),
    data=st.data(),
)
def test_encode_filter_is_json_of_the_reply(
    names: list[str], reasons: list[str], data: st.DataObject
) -> None:
    dropped = data.draw(st.sets(st.sampled_from(names))) if names else set()
    failed = {n: data.draw(st.sampled_from(reasons)) for n in names if n in dropped}
    passed = [n for n in names if n not in dropped]
    args = ExtenderArgs(pod_models(None), "ns/p", names, None)
    assert json.loads(encode_filter(args, passed, failed)) == filter_reply(args, passed, failed)


cluster = st.lists(
    st.tuples(st.sampled_from(NODE_NAMES), st.frozensets(st.sampled_from(range(4))), st.integers(1, 10**12)),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(
    nodes=cluster,
    wanted=st.lists(st.sampled_from(range(4)), min_size=1, max_size=4),
    offered=st.lists(st.sampled_from([*NODE_NAMES, "ghost"]), max_size=10),
    required=st.booleans(),
)
def test_index_fast_paths_match_pure_functions(
    nodes: list[tuple[str, frozenset[int], int]], wanted: list[int], offered: list[str], required: bool
) -> None:
    states = {}
    for name, held, size in nodes:
        models = {MODELS[m].id: ModelEntry(MODELS[m].uri, size, "ready") for m in held}
        states[name] = NodeState(
            name, ready_labels=frozenset(MODELS[m].label_key for m in held), models=models
        )
    index = NodeIndex(states.values())
    annotations = {MODELS_ANNOTATION: ",".join(MODELS[m].uri for m in wanted)}
    if required:
        annotations[LOCALITY_ANNOTATION] = "required"
    pod = pod_models(annotations)

    def ready(name: str) -> frozenset[str]:
        state = states.get(name)
        return state.ready_labels if state else frozenset()

    assert index.scores(pod, offered) == [score_node(pod, ready(n), index.sizes) for n in offered]
    passed, failed = index.filter(pod, offered)
    assert passed == [n for n in offered if filter_reason(pod, ready(n)) is None]
    assert failed == {n: r for n in offered if (r := filter_reason(pod, ready(n))) is not None}
