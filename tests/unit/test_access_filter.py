"""Which pods' models the agent fetches: a pod's reason stays only when its namespace may fetch the
model; distribution pins are not filtered; each (namespace, model) asked for is decided once."""

from __future__ import annotations

import pytest

from agent.cluster.access import AccessGate, filter_wanted, pod_namespace
from agent.lifecycle.modelstate import Wanted
from locality import errors
from locality.access_policy import Decision
from locality.identity import ModelRef, model_ref

A = model_ref("s3://models/team-a/llama")
B = model_ref("s3://models/team-b/bert")


def _allowed(namespace: str, ref: ModelRef) -> bool:
    return ref.uri.startswith(f"s3://models/{namespace}/")


ROWS = {
    "allowed pod kept": ({A.id: (A, frozenset({"pod:team-a/p"}))}, {A.id: {"pod:team-a/p"}}, 0),
    "refused pod: model dropped": ({A.id: (A, frozenset({"pod:team-b/p"}))}, {}, 1),
    "distribution pin not filtered": (
        {B.id: (B, frozenset({"distribution:ns/d", "pod:team-a/p"}))},
        {B.id: {"distribution:ns/d"}},
        1,
    ),
    "mixed pods: the allowed one stays": (
        {A.id: (A, frozenset({"pod:team-a/p", "pod:team-b/q"}))},
        {A.id: {"pod:team-a/p"}},
        1,
    ),
}


@pytest.mark.parametrize(("wanted", "kept", "refusals"), list(ROWS.values()), ids=list(ROWS))
def test_filter_wanted(wanted: Wanted, kept: dict[str, set[str]], refusals: int) -> None:
    out, refused = filter_wanted(wanted, _allowed)
    assert {mid: set(reasons) for mid, (_, reasons) in out.items()} == kept
    assert len(refused) == refusals
    assert all("no ModelAccessPolicy allows it" in line for line in refused)


@pytest.mark.parametrize(
    ("reason", "namespace"),
    [("pod:ns/p", "ns"), ("distribution:ns/d", None), ("manual", None), ("pod:ns", "ns")],
)
def test_pod_namespace(reason: str, namespace: str | None) -> None:
    assert pod_namespace(reason) == namespace


class _Gate(AccessGate):
    """The gate with a fixed decision: this tests which questions ``filter`` asks, not policies."""

    def __init__(self, unavailable: frozenset[str] = frozenset()) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        self.asked: list[tuple[str, str]] = []
        self._unavailable = unavailable

    async def decide(self, namespace: str, ref: ModelRef) -> Decision:
        self.asked.append((namespace, ref.id))
        if namespace in self._unavailable:
            raise errors.Unavailable("ModelAccessPolicies not loaded yet; try again shortly")
        return Decision(_allowed(namespace, ref), "test")


async def test_filter_decides_each_asked_pair_once() -> None:
    gate = _Gate()
    wanted: Wanted = {
        A.id: (A, frozenset({"pod:team-a/p", "pod:team-a/q"})),
        B.id: (B, frozenset({"pod:team-b/r", "distribution:ns/d"})),
    }
    kept = await gate.filter(wanted)
    assert sorted(gate.asked) == sorted([("team-a", A.id), ("team-b", B.id)])
    assert {mid: set(reasons) for mid, (_, reasons) in kept.items()} == {
        A.id: {"pod:team-a/p", "pod:team-a/q"},
        B.id: {"pod:team-b/r", "distribution:ns/d"},
    }


async def test_filter_holds_back_pods_when_policies_are_unavailable() -> None:
    gate = _Gate(unavailable=frozenset({"team-a"}))
    kept = await gate.filter({A.id: (A, frozenset({"pod:team-a/p"})), B.id: (B, frozenset({"pod:team-b/r"}))})
    assert set(kept) == {B.id}, "fail closed: team-a's pod waits, team-b's is decided"
