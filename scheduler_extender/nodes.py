"""Node state as the extender sees it: parsed once per Node event from labels and annotations.

A Node's agent writes (DESIGN.md section 3, contract) one label ``<label key>: "ready"`` per
committed model and the annotation ``model-locality.io/models`` =
``{"<id>": {"uri", "bytes", "state"}}``; optionally ``model-locality.io/cache`` =
``{"used_bytes", "quota_bytes"}``. The label is the truth for "ready" (it is what kube-scheduler
and users can select on); the annotation supplies sizes and in-flight states. Parsing is
defensive: an annotation that is not the documented JSON counts as "no models" and is reported
through ``NodeState.problem`` so the caller can log it once per resourceVersion.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from locality.identity import LABEL_PREFIX, MODELS_ANNOTATION, READY

CACHE_ANNOTATION = "model-locality.io/cache"
GPU_RESOURCE = "nvidia.com/gpu"
MODEL_STATES = frozenset({"queued", "fetching", "ready", "failed", "evicting"})


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One entry of a node's ``model-locality.io/models`` annotation."""

    uri: str
    bytes: int | None
    state: str


@dataclass(frozen=True, slots=True)
class NodeState:
    """What the extender needs from one Node, precomputed when the Node changes."""

    name: str
    ready_labels: frozenset[str] = frozenset()
    models: Mapping[str, ModelEntry] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    schedulable: bool = True
    ready: bool = True
    gpus: int = 0
    free_bytes: int | None = None
    resource_version: str = ""
    problem: str | None = None

    def sizes(self) -> dict[str, int]:
        """Known total bytes per model id on this node."""
        return {mid: e.bytes for mid, e in self.models.items() if e.bytes is not None}


def node_state(obj: Mapping[str, Any]) -> NodeState:
    """Parse a Node (Kubernetes JSON shape, a dict) into a ``NodeState``; never raises on content.

    Raises ``ValueError`` only when the object has no usable ``metadata.name``.
    """
    meta = _dict(obj.get("metadata"))
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("node object has no metadata.name")
    labels = {k: v for k, v in _dict(meta.get("labels")).items() if isinstance(k, str) and isinstance(v, str)}
    annotations = _dict(meta.get("annotations"))
    models, problem = parse_models_annotation(annotations.get(MODELS_ANNOTATION))
    free, cache_problem = parse_cache_annotation(annotations.get(CACHE_ANNOTATION))
    spec = _dict(obj.get("spec"))
    status = _dict(obj.get("status"))
    rv = meta.get("resourceVersion")
    return NodeState(
        name=name,
        ready_labels=ready_labels(labels),
        models=models,
        labels=labels,
        schedulable=spec.get("unschedulable") is not True,
        ready=_ready_condition(status.get("conditions")),
        gpus=_gpu_count(_dict(status.get("allocatable")).get(GPU_RESOURCE)),
        free_bytes=free,
        resource_version=rv if isinstance(rv, str) else "",
        problem=problem or cache_problem,
    )


def ready_labels(labels: Mapping[str, str]) -> frozenset[str]:
    """Our model label keys whose value is ``ready``."""
    return frozenset(k for k, v in labels.items() if v == READY and k.startswith(LABEL_PREFIX))


def parse_models_annotation(raw: object) -> tuple[dict[str, ModelEntry], str | None]:
    """Parse the ``models`` annotation; ``({}, problem)`` when it is not the documented JSON.

    Entries that are individually malformed are skipped (the rest still count), and the first
    such defect is reported.
    """
    if raw is None:
        return {}, None
    if not isinstance(raw, str):
        return {}, f"{MODELS_ANNOTATION} is not a string"
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return {}, f"{MODELS_ANNOTATION} is not JSON: {exc}"
    if not isinstance(data, dict):
        return {}, f"{MODELS_ANNOTATION} is not a JSON object"
    models: dict[str, ModelEntry] = {}
    problem: str | None = None
    for mid, entry in data.items():
        parsed = _model_entry(entry)
        if parsed is None:
            problem = problem or f"{MODELS_ANNOTATION} entry {mid!r} is malformed"
            continue
        models[mid] = parsed
    return models, problem


def _model_entry(entry: object) -> ModelEntry | None:
    if not isinstance(entry, dict):
        return None
    size = entry.get("bytes")
    state = entry.get("state")
    uri = entry.get("uri", "")
    if not isinstance(state, str) or state not in MODEL_STATES or not isinstance(uri, str):
        return None
    valid_size = isinstance(size, int) and not isinstance(size, bool) and size >= 0
    return ModelEntry(uri=uri, bytes=size if valid_size else None, state=state)


def parse_cache_annotation(raw: object) -> tuple[int | None, str | None]:
    """Free bytes from ``{"used_bytes", "quota_bytes"}``; ``None`` (unknown) when absent or bad."""
    if raw is None:
        return None, None
    try:
        data = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return None, f"{CACHE_ANNOTATION} is not a JSON object"
    used, quota = data.get("used_bytes"), data.get("quota_bytes")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (used, quota)):
        return None, f"{CACHE_ANNOTATION} needs non-negative integer used_bytes and quota_bytes"
    return max(0, quota - used), None  # type: ignore[operator]


def _ready_condition(conditions: object) -> bool:
    """True when the Node's ``Ready`` condition is ``True``; a Node without conditions is not ready."""
    if not isinstance(conditions, list):
        return False
    for cond in conditions:
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def _gpu_count(quantity: object) -> int:
    """GPUs are whole devices: a plain integer quantity ("8"); anything else counts as 0."""
    if isinstance(quantity, int) and not isinstance(quantity, bool):
        return max(quantity, 0)
    if isinstance(quantity, str) and quantity.isdigit():
        return int(quantity)
    return 0


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
