"""Node metadata the agent owns: desired labels and annotations from cache state, and the minimal patch.

Pure: no I/O, no clock. ``nodesync`` applies the patch through the Kubernetes edge.

Contract (DESIGN.md section 3): the Node carries ``<label key>: "ready"`` for every committed
model and no other model label of ours; ``model-locality.io/models`` holds compact JSON
``{id: {"uri", "bytes", "state"}}``; ``model-locality.io/cache`` holds
``{"used_bytes", "quota_bytes"}`` for the extender's free-space estimate. Byte progress is not
part of either annotation, so they change only when a model changes state.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from locality.identity import DOMAIN, MODELS_ANNOTATION, READY

CACHE_ANNOTATION = f"{DOMAIN}/cache"
STATES = ("queued", "fetching", "ready", "failed", "evicting")
# The models annotation shares the 256 KiB metadata limit with every other writer on the Node.
MAX_MODELS_ANNOTATION_BYTES = 64 * 1024
MAX_FAILED_ENTRIES = 16
# Only keys shaped like our model labels (``model-locality.io/<slug>.<8 hex>``) are ever removed,
# so an operator's own ``model-locality.io/...`` label (e.g. a DaemonSet nodeSelector) survives.
_MODEL_LABEL = re.compile(r"^model-locality\.io/[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?\.[0-9a-f]{8}$")
# Ready first (the extender scores on them), failed last (the first to be dropped when over budget).
_STATE_ORDER = {"ready": 0, "fetching": 1, "evicting": 2, "queued": 3, "failed": 4}


@dataclass(frozen=True, slots=True)
class ModelState:
    """One model as the Node should advertise it."""

    id: str
    uri: str
    label_key: str
    state: str
    bytes: int = 0  # total bytes, 0 while unknown


@dataclass(frozen=True, slots=True)
class NodeMetadata:
    """Labels and annotations (only the keys that matter here)."""

    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodePatch:
    """A merge patch: a value sets the key, ``None`` removes it."""

    labels: Mapping[str, str | None] = field(default_factory=dict)
    annotations: Mapping[str, str | None] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.labels and not self.annotations


def is_owned_label(key: str) -> bool:
    """True for a label key shaped like one of our model labels (the only ones we ever remove)."""
    return bool(_MODEL_LABEL.match(key))


def desired_metadata(
    models: Iterable[ModelState],
    used_bytes: int,
    quota_bytes: int,
    *,
    max_bytes: int = MAX_MODELS_ANNOTATION_BYTES,
    max_failed: int = MAX_FAILED_ENTRIES,
) -> NodeMetadata:
    """Labels for ready models; the models annotation (bounded) and the cache annotation.

    The annotation keeps entries in the order ready, fetching, evicting, queued, failed (then by
    id); at most ``max_failed`` failed entries; and stops adding entries once the JSON would pass
    ``max_bytes``. Ready models always get their label even if their entry had to be dropped.
    """
    ordered = sorted(models, key=lambda m: (_STATE_ORDER.get(m.state, 9), m.id))
    labels = {m.label_key: READY for m in ordered if m.state == "ready"}
    summary: dict[str, dict[str, object]] = {}
    size, failed = 2, 0  # "{}"
    for m in ordered:
        if m.state == "failed":
            if failed >= max_failed:
                continue
            failed += 1
        entry = {"uri": m.uri, "bytes": max(0, m.bytes), "state": m.state}
        cost = len(_compact({m.id: entry})) - 1  # minus the braces, plus a comma
        if size + cost > max_bytes:
            break
        summary[m.id] = entry
        size += cost
    annotations = {
        MODELS_ANNOTATION: _compact(dict(sorted(summary.items()))),
        CACHE_ANNOTATION: _compact({"used_bytes": max(0, used_bytes), "quota_bytes": max(0, quota_bytes)}),
    }
    return NodeMetadata(labels=labels, annotations=annotations)


def node_patch(current: NodeMetadata, desired: NodeMetadata) -> NodePatch:
    """The smallest patch taking the Node's ``current`` metadata to ``desired`` for our keys only.

    Labels: set each desired key whose value differs; remove each current key that looks like a
    model label of ours and is not desired. Annotations: set each desired key whose value differs
    (we never remove annotations: the desired set always names both of ours).
    """
    labels: dict[str, str | None] = {
        key: value for key, value in desired.labels.items() if current.labels.get(key) != value
    }
    for key in current.labels:
        if key not in desired.labels and is_owned_label(key):
            labels[key] = None
    annotations: dict[str, str | None] = {
        key: value for key, value in desired.annotations.items() if current.annotations.get(key) != value
    }
    return NodePatch(labels=dict(sorted(labels.items())), annotations=dict(sorted(annotations.items())))


def apply_patch(current: NodeMetadata, patch: NodePatch) -> NodeMetadata:
    """``current`` with ``patch`` merged in (what the API server will hold after a merge patch)."""
    return NodeMetadata(
        labels=_merge(current.labels, patch.labels),
        annotations=_merge(current.annotations, patch.annotations),
    )


def metadata_of(node: Mapping[str, object]) -> NodeMetadata:
    """Labels and annotations of a Node object as the API returns it (missing maps are empty)."""
    meta = node.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    return NodeMetadata(labels=_str_map(meta.get("labels")), annotations=_str_map(meta.get("annotations")))


def _merge(base: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    merged = dict(base)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=False, ensure_ascii=False)
