"""kube-scheduler's names-only requests answered without decoding the names (``wire.split_names_only``,
``VerbContext._names_free``): the same answers as the full path, never a stale one."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from locality.contract import LOCALITY_ANNOTATION, MODELS_ANNOTATION, ModelEntry
from locality.identity import model_ref
from scheduler_extender.nodecache import NodeCache, ProblemLog
from scheduler_extender.nodes import NodeState
from scheduler_extender.verbs import VerbContext
from scheduler_extender.wire import parse_args, split_names_only

MODELS = [model_ref(f"s3://models/org/m{i}") for i in range(4)]
NODE_NAMES = [f"gpu-{i}" for i in range(8)]


def go_body(pod: dict[str, object], names: list[str]) -> bytes:
    """An ExtenderArgs body laid out as kube-scheduler's encoding/json writes it."""
    compact = {"separators": (",", ":")}
    return (
        b'{"Pod":' + json.dumps(pod, **compact).encode()  # type: ignore[arg-type]
        + b',"Nodes":null,"NodeNames":' + json.dumps(names, **compact).encode() + b"}"  # type: ignore[arg-type]
    )  # fmt: skip


def a_pod(wanted: list[int], required: bool = False) -> dict[str, object]:
    annotations = {MODELS_ANNOTATION: ",".join(MODELS[m].uri for m in wanted)}
    if required:
        annotations[LOCALITY_ANNOTATION] = "required"
    meta = {"name": "serve-1", "namespace": "team", "annotations": annotations}
    return {"metadata": meta, "spec": {"containers": [{"name": "c"}]}}


def context(nodes: list[tuple[str, frozenset[int], int, int | None]]) -> VerbContext:
    cache = NodeCache()
    cache.index.replace_all(state(*node) for node in nodes)
    return VerbContext(
        cache=cache,
        max_body_bytes=10**7,
        standalone=False,
        pod_problems=ProblemLog(),
        clock=time.monotonic,
        observe_nodes=lambda verb, n: None,
    )


def state(name: str, held: frozenset[int], size: int, rate: int | None = None) -> NodeState:
    models = {MODELS[m].id: ModelEntry(MODELS[m].uri, size, "ready") for m in held}
    labels = frozenset(MODELS[m].label_key for m in held)
    return NodeState(name, ready_labels=labels, models=models, fetch_rate=rate)


def full_path(ctx: VerbContext, verb: str, raw: bytes) -> object:
    args = parse_args(raw)
    return json.loads(ctx.filter(args) if verb == "filter" else ctx.prioritize(args))


def scores_of(reply: object, offered: list[str]) -> dict[str, int]:
    """Host -> score for the offered hosts (kube-scheduler ignores the others)."""
    assert isinstance(reply, list)
    return {e["Host"]: e["Score"] for e in reply if e["Host"] in offered}


cluster = st.lists(
    st.tuples(
        st.sampled_from(NODE_NAMES),
        st.frozensets(st.sampled_from(range(4))),
        st.integers(1, 10**12),
        st.one_of(st.none(), st.sampled_from([10**8, 4 * 10**8, 16 * 10**8])),
    ),
    max_size=8,
    unique_by=lambda node: node[0],
)


@settings(max_examples=300, deadline=None)
@given(
    nodes=cluster,
    wanted=st.lists(st.sampled_from(range(4)), min_size=0, max_size=3),
    offered=st.lists(st.sampled_from([*NODE_NAMES, "ghost"]), max_size=10, unique=True),
    required=st.booleans(),
)
def test_answers_equal_the_full_path(
    nodes: list[tuple[str, frozenset[int], int, int | None]],
    wanted: list[int],
    offered: list[str],
    required: bool,
) -> None:
    ctx = context(nodes)
    raw = go_body(a_pod(wanted, required), offered)
    assert json.loads(ctx.answer("filter", raw)) == full_path(ctx, "filter", raw)
    fast, full = json.loads(ctx.answer("prioritize", raw)), full_path(ctx, "prioritize", raw)
    assert scores_of(fast, offered) == scores_of(full, offered)
    assert all(isinstance(e["Score"], int) and 0 < e["Score"] <= 10 for e in fast)


def test_a_preferred_pod_filter_sends_back_the_names_as_given() -> None:
    ctx = context([("gpu-0", frozenset({0}), 10**9, None)])
    names = ["gpu-1", "gpu-0", "node-with.dots-1"]
    raw = go_body(a_pod([0]), names)
    reply = json.loads(ctx.answer("filter", raw))
    assert reply == {
        "Nodes": None, "NodeNames": names, "FailedNodes": {}, "FailedAndUnresolvableNodes": {}, "Error": ""
    }  # fmt: skip


def test_a_node_change_is_never_answered_from_an_older_table() -> None:
    ctx = context([("gpu-0", frozenset({0}), 10**9, None), ("gpu-1", frozenset(), 10**9, None)])
    raw = go_body(a_pod([0]), ["gpu-0", "gpu-1"])
    assert scores_of(json.loads(ctx.answer("prioritize", raw)), ["gpu-0", "gpu-1"]) == {"gpu-0": 10}
    ctx.cache.index.upsert(state("gpu-1", frozenset({0}), 10**9))
    assert scores_of(json.loads(ctx.answer("prioritize", raw)), ["gpu-0", "gpu-1"]) == {
        "gpu-0": 10,
        "gpu-1": 10,
    }
    ctx.cache.index.remove("gpu-0")
    assert scores_of(json.loads(ctx.answer("prioritize", raw)), ["gpu-0", "gpu-1"]) == {"gpu-1": 10}


def test_a_sample_of_a_large_cluster_is_scored_name_by_name() -> None:
    """Fewer than half the nodes offered: the reply names only offered hosts (no whole table)."""
    nodes = [(f"gpu-{i}", frozenset({0}), 10**9, None) for i in range(10)]
    ctx = context(nodes)
    raw = go_body(a_pod([0]), ["gpu-3", "gpu-7"])
    assert json.loads(ctx.answer("prioritize", raw)) == [
        {"Host": "gpu-3", "Score": 10},
        {"Host": "gpu-7", "Score": 10},
    ]
    everyone = go_body(a_pod([0]), [f"gpu-{i}" for i in range(10)])
    assert len(json.loads(ctx.answer("prioritize", everyone))) == 10


@pytest.mark.parametrize(
    "raw",
    [
        b'{"NodeNames":["a"],"Nodes":null,"Pod":{}}',  # another key order
        b'{"Pod":{}, "Nodes":null, "NodeNames":["a"]}',  # spaces
        b'{"Pod":{},"Nodes":null,"NodeNames":["a\\"b"]}',  # an escaped name
        b'{"Pod":{},"Nodes":null,"NodeNames":["a","b,c"]}',  # a comma inside a name
        b'{"Pod":{},"Nodes":null,"NodeNames":["a",1]}',  # not a string
        b'{"Pod":{},"Nodes":null,"NodeNames":["a"]} ',  # trailing bytes
        b'{"Pod":{},"Nodes":{"items":[]},"NodeNames":["a"]}',  # Nodes given too
        b'{"Pod":[],"Nodes":null,"NodeNames":["a"]}',  # a pod that is not an object
        b'{"Pod":{"metadata":{"annotations":[]}},"Nodes":null,"NodeNames":["a"]}',
        b'{"Pod":{,"Nodes":null,"NodeNames":["a"]}',  # broken JSON
    ],
)
def test_anything_else_is_left_to_the_full_parse(raw: bytes) -> None:
    assert split_names_only(raw) is None


def test_an_annotation_holding_the_names_key_does_not_move_the_names() -> None:
    trick = ',"Nodes":null,"NodeNames":["evil"]'
    pod = {"metadata": {"annotations": {MODELS_ANNOTATION: MODELS[0].uri, "x": trick}}}
    found = split_names_only(go_body(pod, ["gpu-0", "gpu-1"]))
    assert found is not None
    assert found.names() == ["gpu-0", "gpu-1"] and found.offered == 2
    assert found.pod.refs == (MODELS[0],)


def test_malformed_bodies_still_get_the_full_paths_400() -> None:
    ctx = context([])
    from locality import errors

    with pytest.raises(errors.Invalid, match="NodeNames must be a list of strings"):
        ctx.answer("prioritize", b'{"Pod":{},"Nodes":null,"NodeNames":["a",1]}')
