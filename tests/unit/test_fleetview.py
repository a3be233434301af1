"""The fleet view's pure core: rows from Nodes, pods and ModelDistributions, and their rendering."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import yaml

from fleetview import cli, render
from fleetview.rows import distribution_row, model_rows, node_row, pins_of
from locality.contract import CACHE_ANNOTATION, FETCH_RATE_ANNOTATION, MODELS_ANNOTATION, ModelEntry
from locality.identity import model_ref

A = model_ref("s3://models/org/alpha")
B = model_ref("hf://org/beta@main")
C = model_ref("https://example.com/gamma.bin")
GiB = 1 << 30
NOW = dt.datetime(2026, 12, 6, 12, 0, 0, tzinfo=dt.UTC)


def node(
    name: str,
    entries: dict[str, ModelEntry] | None = None,
    *,
    labels: dict[str, str] | None = None,
    cache: tuple[int, int] | None = (0, 100 * GiB),
    ready: bool = True,
    cordoned: bool = False,
    raw: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Node as an agent leaves it: a label per ready model, the models and cache annotations."""
    entries = entries or {}
    annotations = {MODELS_ANNOTATION: json.dumps({k: e.as_json() for k, e in entries.items()})}
    if cache:
        annotations[CACHE_ANNOTATION] = json.dumps({"used_bytes": cache[0], "quota_bytes": cache[1]})
    annotations.update(raw or {})
    ready_labels = {model_ref(e.uri).label_key: "ready" for e in entries.values() if e.state == "ready"}
    return {
        "metadata": {"name": name, "labels": {**ready_labels, **(labels or {})}, "annotations": annotations},
        "spec": {"unschedulable": True} if cordoned else {},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def pod(ns: str, name: str, node_name: str | None, uris: str, phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "annotations": {MODELS_ANNOTATION: uris}},
        "spec": {"nodeName": node_name} if node_name else {},
        "status": {"phase": phase},
    }


def dist(name: str, uri: str, targets: list[str], **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "creationTimestamp": "2026-12-06T11:00:00Z"},
        "spec": {"uri": uri, "replicas": len(targets) or "all"},
        "status": {"targets": targets, **status},
    }


@pytest.mark.parametrize(
    ("name", "entry", "state", "progress"),
    [
        ("ready is whole", ModelEntry(A.uri, 10, "ready"), "ready", 1.0),
        ("fetching with bytes_done", ModelEntry(A.uri, 400, "fetching", bytes_done=100), "fetching", 0.25),
        ("fetching without bytes_done", ModelEntry(A.uri, 400, "fetching"), "fetching", None),
        ("fetching, size unknown", ModelEntry(A.uri, None, "fetching", bytes_done=5), "fetching", None),
        ("queued has nothing yet", ModelEntry(A.uri, 400, "queued"), "queued", 0.0),
        ("failed has no progress", ModelEntry(A.uri, 400, "failed"), "failed", None),
    ],
)
def test_model_progress(name: str, entry: ModelEntry, state: str, progress: float | None) -> None:
    [row] = model_rows(node("n1", {A.id: entry}))
    assert (row.state, row.progress) == (state, progress)
    assert row.labelled == (state == "ready")


def test_model_rows_are_sorted_and_carry_revision_and_label() -> None:
    entries = {
        C.id: ModelEntry(C.uri, 3, "ready", revision="etag-1"),
        A.id: ModelEntry(A.uri, 1, "ready", revision="0123456789abcdef0123"),
        B.id: ModelEntry(B.uri, 2, "fetching", bytes_done=1),
    }
    found = model_rows(node("n1", entries))
    assert [r.uri for r in found] == sorted([A.uri, B.uri, C.uri])
    assert {r.uri: r.label_key for r in found} == {A.uri: A.label_key, B.uri: B.label_key, C.uri: C.label_key}
    assert {r.uri: r.revision for r in found}[A.uri] == "0123456789abcdef0123"


READY_A = ModelEntry(A.uri, 1, "ready").as_json()


@pytest.mark.parametrize(
    ("name", "annotation", "expected"),
    [
        ("not JSON", "{oops", []),
        ("not an object", "[1, 2]", []),
        ("one entry junk, the other kept", json.dumps({"x": 5, A.id: READY_A}), [A.id]),
        ("unknown fields tolerated", json.dumps({A.id: {**READY_A, "peer_bytes": 7, "eta": "soon"}}), [A.id]),
        ("unknown state skipped", json.dumps({A.id: {"uri": A.uri, "bytes": 1, "state": "sleeping"}}), []),
    ],
)  # fmt: skip
def test_junk_annotations_never_raise(name: str, annotation: str, expected: list[str]) -> None:
    obj = node("n1", raw={MODELS_ANNOTATION: annotation})
    assert [r.model_id for r in model_rows(obj)] == expected


def test_a_ready_label_without_an_entry_is_a_row() -> None:
    """The agent drops entries past 64 KiB of annotation, never the labels of ready models."""
    [row] = model_rows(node("n1", labels={A.label_key: "ready", "model-locality.io/gpu-pool": "a"}))
    assert (row.model_id, row.uri, row.state, row.label_key) == (A.id[:8], "", "ready", A.label_key)


def test_pins_come_from_running_bound_pods_and_distribution_targets() -> None:
    pods = [
        pod("serving", "p1", "n1", f"{A.uri}, {B.uri}"),
        pod("serving", "done", "n1", C.uri, phase="Succeeded"),
        pod("serving", "pending", None, C.uri),
        pod("other", "junk", "n2", "not a uri"),
    ]
    dists = [dist("d1", A.uri, ["n1", "n2"])]
    assert pins_of(pods, dists) == {
        ("n1", A.id): ("distribution:d1", "pod:serving/p1"),
        ("n1", B.id): ("pod:serving/p1",),
        ("n2", A.id): ("distribution:d1",),
    }


def test_node_row_counts_use_states_and_pins() -> None:
    entries = {
        A.id: ModelEntry(A.uri, 30 * GiB, "ready"),
        B.id: ModelEntry(B.uri, 50 * GiB, "ready"),
        C.id: ModelEntry(C.uri, 10 * GiB, "fetching", bytes_done=GiB),
    }
    obj = node("n1", entries, cache=(81 * GiB, 100 * GiB), raw={FETCH_RATE_ANNOTATION: "730000000"})
    row = node_row(obj, {("n1", A.id): ("pod:s/p",), ("n1", B.id): ("distribution:d",), ("n9", C.id): ("x",)})
    assert row.states == {"ready": 2, "fetching": 1}
    assert (row.pinned, row.pinned_bytes) == (2, 80 * GiB)
    assert row.use == pytest.approx(0.81)
    assert (row.fetch_rate, row.problem) == (730000000, None)


@pytest.mark.parametrize(
    ("name", "obj", "status", "problem"),
    [
        ("ready and schedulable", node("n"), "Ready", None),
        ("not ready", node("n", ready=False), "NotReady", None),
        ("cordoned", node("n", cordoned=True), "Ready,SchedulingDisabled", None),
        ("no cache annotation", node("n", cache=None), "Ready", None),
        ("bad cache annotation", node("n", raw={CACHE_ANNOTATION: "{}"}), "Ready", "cache"),
        ("bad fetch rate", node("n", raw={FETCH_RATE_ANNOTATION: "fast"}), "Ready", "fetch-rate"),
    ],
)
def test_node_status_and_problems(name: str, obj: dict[str, Any], status: str, problem: str | None) -> None:
    row = node_row(obj)
    cells = render.tabulate(render.NODE_COLUMNS, [row], wide=True).splitlines()[1]
    assert cells.split()[1] == status
    assert (problem in (row.problem or "")) if problem else row.problem is None


@pytest.mark.parametrize(
    ("name", "status", "word", "desired", "ready"),
    [
        ("not reconciled yet", {}, "Pending", None, None),
        ("all ready", {"desired": 2, "ready": 2, "conditions": [
            {"type": "Ready", "status": "True", "reason": "TargetsReady", "message": "2/2"}]}, "Ready", 2, 2),
        ("fetching", {"desired": 2, "ready": 1, "conditions": [
            {"type": "Ready", "status": "False", "reason": "Fetching", "message": "1/2"}]}, "Fetching", 2, 1),
        ("short of nodes", {"desired": 3, "ready": 1, "conditions": [
            {"type": "Ready", "status": "False", "reason": "NotEnoughNodes", "message": "1 eligible"}]},
         "NotEnoughNodes", 3, 1),
        ("junk counts", {"desired": "three", "ready": -1}, "Pending", None, None),
    ],
)  # fmt: skip
def test_distribution_rows(
    name: str, status: dict[str, Any], word: str, desired: int | None, ready: int | None
) -> None:
    obj = {"metadata": {"name": "d"}, "spec": {"uri": A.uri, "replicas": 2}, "status": status}
    row = distribution_row(obj)
    assert (row.condition, row.desired, row.ready) == (word, desired, ready)
    assert (row.model_id, row.replicas) == (A.id, "2")


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "<none>"),
        (0, "0B"),
        (1023, "1023B"),
        (1536, "1.5KiB"),
        (250 * GiB, "250GiB"),
        (3 * GiB // 2, "1.5GiB"),
    ],
)
def test_sizes(n: int | None, text: str) -> None:
    assert render.size(n) == text


@pytest.mark.parametrize(
    ("created", "text"),
    [
        ("2026-12-06T11:59:15Z", "45s"),
        ("2026-12-06T11:00:00Z", "60m"),
        ("2026-12-06T06:00:00Z", "6h"),
        ("2026-12-01T12:00:00Z", "5d"),
        ("", "<unknown>"),
    ],
)
def test_ages(created: str, text: str) -> None:
    assert render.age(created, NOW) == text


def test_tables_align_like_kubectl_and_wide_adds_columns() -> None:
    entries = {
        A.id: ModelEntry(A.uri, GiB, "ready"),
        B.id: ModelEntry(B.uri, 4 * GiB, "fetching", bytes_done=GiB),
    }
    rows = model_rows(node("node-a", entries))
    narrow = render.tabulate(render.MODEL_COLUMNS, rows, wide=False).splitlines()
    assert narrow[0].split() == ["MODEL", "NODE", "STATE", "SIZE", "PROGRESS", "REVISION"]
    assert narrow[1].split() == [B.uri, "node-a", "fetching", "4.0GiB", "25%", "<none>"]
    assert narrow[2].split() == [A.uri, "node-a", "ready", "1.0GiB", "100%", "<none>"]
    starts = {line.index(line.split()[1]) for line in narrow}  # the NODE column starts at one offset
    assert len(starts) == 1
    wide = render.tabulate(render.MODEL_COLUMNS, rows, wide=True).splitlines()
    assert wide[0].split()[-3:] == ["ID", "LABELLED", "PINNED-BY"]
    assert wide[2].split()[-3:] == [A.id, "yes", "<none>"]


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_documents_carry_exact_fields(fmt: str) -> None:
    rows = model_rows(node("n1", {A.id: ModelEntry(A.uri, 123456789, "fetching", bytes_done=23456789)}))
    text = render.document("Model", rows, fmt)
    doc = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    assert doc["kind"] == "ModelList"
    [item] = doc["items"]
    assert (item["bytes"], item["bytes_done"]) == (123456789, 23456789)
    assert (item["model_id"], item["node"]) == (A.id, "n1")
    assert item["progress"] == pytest.approx(23456789 / 123456789)


def test_id_verb_prints_the_names_of_a_uri(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["id", "S3://Models//org/alpha/"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["URI", "ID", "LABEL"]
    assert out[1].split() == [A.uri, A.id, A.label_key]


@pytest.mark.parametrize(
    ("name", "argv", "message"),
    [
        ("bad URI", ["id", "ftp://x/y"], "unsupported scheme"),
        ("watch with json", ["models", "-w", "-o", "json"], "--watch prints tables"),
        ("bad timeout", ["nodes", "--request-timeout", "0"], "must be positive"),
        ("missing kubeconfig", ["nodes", "--kubeconfig", "/nonexistent/kubeconfig"], "cannot use kubeconfig"),
    ],
)
def test_user_errors_are_one_line(
    name: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
