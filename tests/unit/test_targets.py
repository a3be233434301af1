"""Target choice for ModelDistribution: named table rows and stability properties."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from locality.contract import ModelEntry
from locality.identity import model_ref
from scheduler_extender.nodes import NodeState
from scheduler_extender.targets import Want, choose_targets, eligible, rendezvous

M = model_ref("s3://models/org/llama-8b")


def gpu(name: str, **kw: object) -> NodeState:
    base = NodeState(name, gpus=8, labels={"pool": "a"})
    return replace(base, **kw)  # type: ignore[arg-type]


def want(replicas: int | str = 1, selector: dict[str, str] | None = None, size: int | None = None) -> Want:
    return Want(M.id, M.label_key, replicas, selector or {}, size)


NODES = [gpu(f"gpu-{i}") for i in range(8)]


def top_by_hash(names: list[str], k: int) -> list[str]:
    return sorted(sorted(names, key=lambda n: rendezvous(M.id, n), reverse=True)[:k])


@dataclass(frozen=True)
class Row:
    name: str
    want: Want
    nodes: list[NodeState]
    expected: list[str]
    previous: list[str] = field(default_factory=list)


ROWS = [
    Row("one replica: highest rendezvous hash", want(1), NODES, top_by_hash([n.name for n in NODES], 1)),
    Row("three replicas", want(3), NODES, top_by_hash([n.name for n in NODES], 3)),
    Row("cordoned node skipped", want("all"), [gpu("a"), gpu("b", schedulable=False)], ["a"]),
    Row("NotReady node skipped", want("all"), [gpu("a", ready=False), gpu("b")], ["b"]),
    Row(
        "selector mismatch skipped",
        want("all", {"pool": "a"}),
        [gpu("a"), gpu("b", labels={"pool": "b"})],
        ["a"],
    ),
    Row(
        "selector key absent skipped",
        want("all", {"zone": "z1"}),
        [gpu("a"), gpu("b", labels={"zone": "z1"})],
        ["b"],
    ),
    Row("CPU node skipped when GPUs exist", want("all"), [gpu("a"), gpu("cpu", gpus=0)], ["a"]),
    Row("no GPUs anywhere: all nodes count", want("all"), [gpu("a", gpus=0), gpu("b", gpus=0)], ["a", "b"]),
    Row(
        "ready holder preferred over hash",
        want(1),
        [*NODES, gpu("holder", ready_labels=frozenset({M.label_key}))],
        ["holder"],
    ),
    Row(
        "fetching node preferred over cold",
        want(1),
        [*NODES, gpu("warming", models={M.id: ModelEntry(M.uri, 10, "fetching")})],
        ["warming"],
    ),
    Row(
        "not enough free space skipped",
        want("all", size=100),
        [gpu("a", free_bytes=99), gpu("b", free_bytes=100)],
        ["b"],
    ),
    Row("unknown free space allowed", want("all", size=100), [gpu("a", free_bytes=None)], ["a"]),
    Row("unknown model size allowed", want("all"), [gpu("a", free_bytes=0)], ["a"]),
    Row(
        "holder needs no room",
        want("all", size=100),
        [gpu("a", free_bytes=0, models={M.id: ModelEntry(M.uri, 100, "fetching")})],
        ["a"],
    ),
    Row("not enough nodes: all eligible", want(5), [gpu("a"), gpu("b"), gpu("c", ready=False)], ["a", "b"]),
    Row("previous targets kept", want(2), NODES, ["gpu-0", "gpu-7"], previous=["gpu-0", "gpu-7"]),
    Row(
        "previous target gone ineligible replaced",
        want(1),
        [gpu("x", schedulable=False), gpu("y")],
        ["y"],
        previous=["x"],
    ),
    Row(
        "replicas lowered: best of previous kept",
        want(1),
        [gpu("a"), gpu("b")],
        top_by_hash(["a", "b"], 1),
        ["a", "b"],
    ),
    Row("no nodes", want(3), [], []),
]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_target_table(row: Row) -> None:
    assert list(choose_targets(row.want, row.nodes, row.previous)) == row.expected


def test_new_unrelated_node_does_not_move_targets() -> None:
    before = choose_targets(want(3), NODES)
    for extra in range(50):
        after = choose_targets(want(3), [*NODES, gpu(f"new-{extra}")])
        # A newcomer may win a slot on hash alone, but at most one old target moves per newcomer,
        # and with the previous targets passed in nothing moves at all.
        assert len(set(before) - set(after)) <= 1
        assert choose_targets(want(3), [*NODES, gpu(f"new-{extra}")], before) == before


def test_removing_unchosen_node_does_not_move_targets() -> None:
    before = choose_targets(want(3), NODES)
    for node in NODES:
        if node.name not in before:
            rest = [n for n in NODES if n.name != node.name]
            assert choose_targets(want(3), rest) == before


def test_all_includes_new_nodes() -> None:
    before = choose_targets(want("all"), NODES)
    after = choose_targets(want("all"), [*NODES, gpu("late")], before)
    assert set(after) == {*before, "late"}


def test_deterministic_whatever_the_input_order() -> None:
    assert choose_targets(want(3), NODES) == choose_targets(want(3), list(reversed(NODES)))


def test_different_models_spread_over_nodes() -> None:
    picks = {choose_targets(Want(f"{i:016x}", f"l{i}", 1, {}), NODES)[0] for i in range(40)}
    assert len(picks) > 3  # rendezvous spreads first replicas instead of piling on one node


def test_eligible_does_not_mutate_inputs() -> None:
    nodes = [gpu("a"), gpu("b", ready=False)]
    copy = list(nodes)
    eligible(want(), nodes)
    assert nodes == copy
