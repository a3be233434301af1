"""Node state as the extender sees it: parsed once per Node event from labels and annotations.

A Node's agent writes (the node contract, ``locality.contract``) one label ``<label key>: "ready"`` per
committed model and the annotation ``model-locality.io/models`` =
``{"<id>": {"uri", "bytes", "state"}}``; optionally ``model-locality.io/cache`` =
``{"used_bytes", "quota_bytes"}`` and ``model-locality.io/fetch-rate`` (measured bytes/s); an
in-flight entry may carry ``bytes_done``. The label is the truth for "ready" (it is what kube-scheduler
and users can select on); the annotation supplies sizes and in-flight states. Parsing is
defensive: an annotation that is not the documented JSON counts as "no models" and is reported
through ``NodeState.problem`` so the caller can log it once per resourceVersion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from locality.contract import (
    CACHE_ANNOTATION,
    FETCH_RATE_ANNOTATION,
    MODELS_ANNOTATION,
    READY,
    ModelEntry,
    mapping,
    parse_cache_annotation,
    parse_fetch_rate,
    parse_models_annotation,
)
from locality.identity import is_model_label

GPU_RESOURCE = "nvidia.com/gpu"


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
    fetch_rate: int | None = None  # measured bytes/s (model-locality.io/fetch-rate); None: not yet
    resource_version: str = ""
    problem: str | None = None

    def sizes(self) -> dict[str, int]:
        """Known total bytes per model id on this node."""
        return {mid: e.bytes for mid, e in self.models.items() if e.bytes is not None}


def node_state(obj: Mapping[str, Any]) -> NodeState:
    """Parse a Node (Kubernetes JSON shape, a dict) into a ``NodeState``; never raises on content.

    Raises ``ValueError`` only when the object has no usable ``metadata.name``.
    """
    meta = mapping(obj.get("metadata"))
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("node object has no metadata.name")
    labels = {
        k: v for k, v in mapping(meta.get("labels")).items() if isinstance(k, str) and isinstance(v, str)
    }
    annotations = mapping(meta.get("annotations"))
    models, problem = parse_models_annotation(annotations.get(MODELS_ANNOTATION))
    usage, cache_problem = parse_cache_annotation(annotations.get(CACHE_ANNOTATION))
    rate, rate_problem = parse_fetch_rate(annotations.get(FETCH_RATE_ANNOTATION))
    spec = mapping(obj.get("spec"))
    status = mapping(obj.get("status"))
    rv = meta.get("resourceVersion")
    return NodeState(
        name=name,
        ready_labels=ready_labels(labels),
        models=models,
        labels=labels,
        schedulable=spec.get("unschedulable") is not True,
        ready=_ready_condition(status.get("conditions")),
        gpus=_gpu_count(mapping(status.get("allocatable")).get(GPU_RESOURCE)),
        free_bytes=usage.free_bytes if usage else None,
        fetch_rate=rate,
        resource_version=rv if isinstance(rv, str) else "",
        problem=problem or cache_problem or rate_problem,
    )


def ready_labels(labels: Mapping[str, str]) -> frozenset[str]:
    """Our model label keys whose value is ``ready``."""
    return frozenset(k for k, v in labels.items() if v == READY and is_model_label(k))


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
