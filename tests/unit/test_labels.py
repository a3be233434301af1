"""Table tests of the Node label and annotation diff (agent.cluster.labels)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from agent.cluster.labels import (
    ModelState,
    NodeMetadata,
    NodePatch,
    desired_metadata,
    metadata_of,
    node_patch,
)
from locality.contract import CACHE_ANNOTATION, MODELS_ANNOTATION
from locality.identity import is_model_label, model_ref


def apply_patch(current: NodeMetadata, patch: NodePatch) -> NodeMetadata:
    """What the API server holds after the merge patch (test-only: the agent never needs it)."""

    def merge(base: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
        merged = dict(base)
        for key, value in changes.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged

    return NodeMetadata(merge(current.labels, patch.labels), merge(current.annotations, patch.annotations))


A = model_ref("s3://models/org/llama-3-8b")
B = model_ref("s3://models/org/mistral-7b")
C = model_ref("https://example.com/weights/tiny.bin")


def state(ref: object, st: str, size: int = 100) -> ModelState:
    assert hasattr(ref, "id")
    return ModelState(id=ref.id, uri=ref.uri, label_key=ref.label_key, state=st, bytes=size)  # type: ignore[attr-defined]


def annotations(models: dict[str, dict[str, object]], used: int = 0, quota: int = 1000) -> dict[str, str]:
    return {
        MODELS_ANNOTATION: json.dumps(dict(sorted(models.items())), separators=(",", ":")),
        CACHE_ANNOTATION: json.dumps({"used_bytes": used, "quota_bytes": quota}, separators=(",", ":")),
    }


FOREIGN = {"kubernetes.io/hostname": "node-a", "nvidia.com/gpu.product": "H100"}
OPERATOR_LABEL = {"model-locality.io/agent": "enabled"}

# name: (models, current labels, current annotations, expected label patch, annotation keys patched)
CASES = {
    "empty cache, bare node": ([], FOREIGN, {}, {}, {MODELS_ANNOTATION, CACHE_ANNOTATION}),
    "one ready model gets its label": (
        [state(A, "ready")],
        FOREIGN,
        {},
        {A.label_key: "ready"},
        {MODELS_ANNOTATION, CACHE_ANNOTATION},
    ),
    "fetching model: no label, annotation only": (
        [state(A, "fetching", 0)],
        FOREIGN,
        annotations({}),
        {},
        {MODELS_ANNOTATION},
    ),
    "stale label removed": (
        [state(A, "ready")],
        {**FOREIGN, A.label_key: "ready", B.label_key: "ready"},
        annotations({A.id: {"uri": A.uri, "bytes": 100, "state": "ready"}}),
        {B.label_key: None},
        set(),
    ),
    "in sync: empty patch": (
        [state(A, "ready"), state(B, "queued", 0)],
        {**FOREIGN, A.label_key: "ready"},
        annotations(
            {
                A.id: {"uri": A.uri, "bytes": 100, "state": "ready"},
                B.id: {"uri": B.uri, "bytes": 0, "state": "queued"},
            }
        ),
        {},
        set(),
    ),
    "evicting model loses its label": (
        [state(A, "evicting")],
        {A.label_key: "ready"},
        annotations({}),
        {A.label_key: None},
        {MODELS_ANNOTATION},
    ),
    "wrong label value fixed": (
        [state(A, "ready")],
        {A.label_key: "fetching"},
        {},
        {A.label_key: "ready"},
        None,
    ),
    "operator label under our prefix kept": ([], {**OPERATOR_LABEL}, annotations({}), {}, set()),
    "foreign labels never touched": ([], {**FOREIGN}, annotations({}), {}, set()),
    "failed model: annotation, no label": (
        [state(C, "failed", 0)],
        {C.label_key: "ready"},
        annotations({}),
        {C.label_key: None},
        {MODELS_ANNOTATION},
    ),
}


@pytest.mark.parametrize(
    ("models", "labels", "annots", "label_patch", "annotation_keys"), list(CASES.values()), ids=list(CASES)
)
def test_patch(
    models: list[ModelState],
    labels: dict[str, str],
    annots: dict[str, str],
    label_patch: dict[str, str | None],
    annotation_keys: set[str] | None,
) -> None:
    current = NodeMetadata(labels=labels, annotations=annots)
    desired = desired_metadata(models, used_bytes=0, quota_bytes=1000)
    patch = node_patch(current, desired)
    assert dict(patch.labels) == label_patch
    if annotation_keys is not None:
        assert set(patch.annotations) == annotation_keys
    after = apply_patch(current, patch)
    # Applying the patch converges: a second diff is empty, and foreign keys are untouched.
    assert node_patch(after, desired).empty
    for key, value in labels.items():
        if not is_model_label(key):
            assert after.labels[key] == value


def test_annotation_shape() -> None:
    desired = desired_metadata([state(A, "ready", 123), state(B, "fetching", 0)], 500, 1000)
    models = json.loads(desired.annotations[MODELS_ANNOTATION])
    assert models == {
        A.id: {"uri": A.uri, "bytes": 123, "state": "ready"},
        B.id: {"uri": B.uri, "bytes": 0, "state": "fetching"},
    }
    assert " " not in desired.annotations[MODELS_ANNOTATION]
    assert json.loads(desired.annotations[CACHE_ANNOTATION]) == {"used_bytes": 500, "quota_bytes": 1000}


def test_failed_entries_capped() -> None:
    failed = [state(model_ref(f"s3://models/bad/m{i}"), "failed", 0) for i in range(40)]
    desired = desired_metadata([*failed, state(A, "ready")], 0, 1, max_failed=5)
    models = json.loads(desired.annotations[MODELS_ANNOTATION])
    assert sum(1 for m in models.values() if m["state"] == "failed") == 5
    assert models[A.id]["state"] == "ready"


def test_annotation_bounded_but_ready_labels_kept() -> None:
    many = [state(model_ref(f"s3://models/m/{'x' * 50}{i}"), "ready") for i in range(200)]
    desired = desired_metadata(many, 0, 1, max_bytes=2048)
    assert len(desired.annotations[MODELS_ANNOTATION].encode()) <= 2048
    assert len(json.loads(desired.annotations[MODELS_ANNOTATION])) < 200
    assert len(desired.labels) == 200


OWNED = {
    "model label": (A.label_key, True),
    "models annotation key": (MODELS_ANNOTATION, False),
    "operator label": ("model-locality.io/agent", False),
    "other domain": ("example.com/llama.0123abcd", False),
    "upper-case hex": ("model-locality.io/llama.0123ABCD", False),
}


@pytest.mark.parametrize(("key", "owned"), list(OWNED.values()), ids=list(OWNED))
def test_is_model_label(key: str, owned: bool) -> None:
    assert is_model_label(key) is owned


METADATA = {
    "full node": (
        {"metadata": {"labels": {"a": "1"}, "annotations": {"b": "2"}}},
        NodeMetadata({"a": "1"}, {"b": "2"}),
    ),
    "no maps": ({"metadata": {"name": "n"}}, NodeMetadata({}, {})),
    "null labels": ({"metadata": {"labels": None}}, NodeMetadata({}, {})),
    "garbage": ({"metadata": "x"}, NodeMetadata({}, {})),
}


@pytest.mark.parametrize(("node", "expected"), list(METADATA.values()), ids=list(METADATA))
def test_metadata_of(node: dict[str, object], expected: NodeMetadata) -> None:
    got = metadata_of(node)
    assert dict(got.labels) == dict(expected.labels)
    assert dict(got.annotations) == dict(expected.annotations)


def test_empty_patch() -> None:
    assert NodePatch().empty
    assert not NodePatch(labels={"x": None}).empty
