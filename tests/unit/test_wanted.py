"""Table tests of what a node should hold and pin (agent.cluster.watchers.wanted_models)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.cluster.wanted import pod_model_refs, wanted_models, wanted_revisions
from locality.contract import MODELS_ANNOTATION
from locality.identity import model_ref

NODE = "node-a"
A = model_ref("s3://models/org/llama")
B = model_ref("s3://models/org/mistral")


def pod(
    name: str, uris: str | None, *, node: str | None = NODE, phase: str | None = "Running", ns: str = "ml"
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if uris is not None:
        meta["annotations"] = {MODELS_ANNOTATION: uris, "other": "x"}
    status = {"phase": phase} if phase else {}
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}, "status": status}


def dist(name: str, uri: Any, targets: Any) -> dict[str, Any]:
    status = {"targets": targets} if targets is not None else {}
    return {"metadata": {"name": name}, "spec": {"uri": uri}, "status": status}


# name: (pods, distributions, expected {model id: reasons})
CASES: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, set[str]]]] = {
    "nothing": ([], [], {}),
    "running pod pins its model": ([pod("p", A.uri)], [], {A.id: {"pod:ml/p"}}),
    "pending pod pins": ([pod("p", A.uri, phase="Pending")], [], {A.id: {"pod:ml/p"}}),
    "no phase yet counts as pending": ([pod("p", A.uri, phase=None)], [], {A.id: {"pod:ml/p"}}),
    "succeeded pod does not pin": ([pod("p", A.uri, phase="Succeeded")], [], {}),
    "failed pod does not pin": ([pod("p", A.uri, phase="Failed")], [], {}),
    "pod on another node ignored": ([pod("p", A.uri, node="node-b")], [], {}),
    "unbound pod ignored": ([pod("p", A.uri, node=None)], [], {}),
    "pod without annotation": ([pod("p", None)], [], {}),
    "two models, blanks and empties": (
        [pod("p", f" {A.uri} ,, {B.uri},")],
        [],
        {A.id: {"pod:ml/p"}, B.id: {"pod:ml/p"}},
    ),
    "bad URI skipped, good kept": ([pod("p", f"ftp://x/y,{A.uri}")], [], {A.id: {"pod:ml/p"}}),
    "unnormalised URI maps to the same id": ([pod("p", "S3://MODELS/org/llama/")], [], {A.id: {"pod:ml/p"}}),
    "two pods share a model": (
        [pod("p1", A.uri), pod("p2", A.uri, ns="other")],
        [],
        {A.id: {"pod:ml/p1", "pod:other/p2"}},
    ),
    "distribution targeting this node": (
        [],
        [dist("d1", B.uri, [NODE, "node-b"])],
        {B.id: {"distribution:d1"}},
    ),
    "distribution targeting others": ([], [dist("d1", B.uri, ["node-b"])], {}),
    "distribution without status": ([], [dist("d1", B.uri, None)], {}),
    "distribution with garbage targets": ([], [dist("d1", B.uri, "node-a")], {}),
    "distribution with bad uri": ([], [dist("d1", "nope://x", [NODE])], {}),
    "distribution without uri": ([], [dist("d1", None, [NODE])], {}),
    "pod and distribution on one model": (
        [pod("p", A.uri)],
        [dist("d1", A.uri, [NODE])],
        {A.id: {"pod:ml/p", "distribution:d1"}},
    ),
    "garbage objects": ([{"metadata": None, "spec": 3}], [{"status": []}], {}),
}


@pytest.mark.parametrize(("pods", "dists", "expected"), list(CASES.values()), ids=list(CASES))
def test_wanted_models(
    pods: list[dict[str, Any]], dists: list[dict[str, Any]], expected: dict[str, set[str]]
) -> None:
    snapshot = repr((pods, dists))
    wanted = wanted_models(pods, dists, NODE)
    assert {mid: set(reasons) for mid, (_, reasons) in wanted.items()} == expected
    for mid, (ref, _) in wanted.items():
        assert ref.id == mid
    assert repr((pods, dists)) == snapshot  # inputs are not mutated


def test_pod_models_reports_bad_uris() -> None:
    refs, errors = pod_model_refs(pod("p", f"{A.uri},s3://x/../y,http://"))
    assert refs == [A]
    assert len(errors) == 2
    assert all("pod ml/p" in e for e in errors)


def test_wanted_revisions_of_distributions_targeting_this_node() -> None:
    def pinned(name: str, uri: str, targets: Any, revision: Any) -> dict[str, Any]:
        obj = dist(name, uri, targets)
        obj["spec"]["revision"] = revision
        return obj

    dists = [
        pinned("b-second", A.uri, [NODE], "bbbbbbb"),
        pinned("a-first", A.uri, [NODE], "aaaaaaa"),  # the first by name wins
        pinned("elsewhere", B.uri, ["node-b"], "ccccccc"),  # not this node
        pinned("garbage", B.uri, [NODE], 7),
        dist("latest", B.uri, [NODE]),  # no revision: the latest
    ]
    assert wanted_revisions(dists, NODE) == {A.id: "aaaaaaa"}
    assert wanted_revisions([pinned("x", "nope://x", [NODE], "aaaaaaa")], NODE) == {}
