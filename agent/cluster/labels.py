"""Node metadata the agent owns: desired labels and annotations from cache state, and the minimal patch.

Pure: no I/O, no clock. ``nodesync`` applies the patch through the Kubernetes edge.

Contract (the node contract, ``locality.contract``): the Node carries ``<label key>: "ready"``
for every committed model and no other model label of ours; ``model-locality.io/models`` holds compact JSON
``{id: {"uri", "bytes", "state"}}``; ``model-locality.io/cache`` holds
``{"used_bytes", "quota_bytes"}`` for the extender's free-space estimate. For the extender's
time-to-ready score, an in-flight entry carries ``bytes_done`` and ``model-locality.io/fetch-rate``
the measured bytes/s, each rewritten only on a material change (``locality.contract``:
``progress_changed``, ``rate_changed``) and progress only when the caller allows it (``nodesync``
bounds progress-only writes in time); otherwise the written value is kept, so no patch follows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agent.lifecycle.modelstate import ModelState
from locality.contract import (
    CACHE_ANNOTATION,
    FETCH_RATE_ANNOTATION,
    MODELS_ANNOTATION,
    READY,
    CacheUsage,
    ModelEntry,
    format_fetch_rate,
    mapping,
    parse_fetch_rate,
    parse_models_annotation,
    progress_changed,
    rate_changed,
    str_map,
)
from locality.identity import is_model_label, redact_uri

# The models annotation shares the 256 KiB metadata limit with every other writer on the Node.
MAX_MODELS_ANNOTATION_BYTES = 64 * 1024
MAX_FAILED_ENTRIES = 16
# Ready first (the extender scores on them), failed last (the first to be dropped when over budget).
_STATE_ORDER = {"ready": 0, "fetching": 1, "evicting": 2, "queued": 3, "failed": 4}


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


def desired_metadata(
    models: Iterable[ModelState],
    used_bytes: int,
    quota_bytes: int,
    *,
    max_bytes: int = MAX_MODELS_ANNOTATION_BYTES,
    max_failed: int = MAX_FAILED_ENTRIES,
    written: NodeMetadata | None = None,
    progress: bool = True,
    rate: float | None = None,
) -> NodeMetadata:
    """Labels for ready models; the models annotation (bounded) and the cache annotation.

    The annotation keeps entries in the order ready, fetching, evicting, queued, failed (then by
    id); at most ``max_failed`` failed entries; and stops adding entries once the JSON would pass
    ``max_bytes``. Ready models always get their label even if their entry had to be dropped.
    """
    ordered = sorted(models, key=lambda m: (_STATE_ORDER.get(m.state, 9), m.id))
    before = written.annotations if written is not None else {}
    entries, _ = parse_models_annotation(before.get(MODELS_ANNOTATION))
    shown = {mid: e.bytes_done for mid, e in entries.items()}
    labels = {m.label_key: READY for m in ordered if m.state == "ready"}
    summary: dict[str, dict[str, object]] = {}
    size, failed = 2, 0  # "{}"
    for m in ordered:
        if m.state == "failed":
            if failed >= max_failed:
                continue
            failed += 1
        # Node annotations are world-readable: no credentials or signed query strings in them.
        done = _done(m, shown.get(m.id), progress)
        entry = ModelEntry(redact_uri(m.uri), m.bytes, m.state, m.revision, done).as_json()
        cost = len(_compact({m.id: entry})) - 1  # minus the braces, plus a comma
        if size + cost > max_bytes:
            break
        summary[m.id] = entry
        size += cost
    annotations = {
        MODELS_ANNOTATION: _compact(dict(sorted(summary.items()))),
        CACHE_ANNOTATION: _compact(CacheUsage(used_bytes, quota_bytes).as_json()),
    }
    shown_rate, _ = parse_fetch_rate(before.get(FETCH_RATE_ANNOTATION))
    if rate is not None and rate_changed(shown_rate, rate):
        annotations[FETCH_RATE_ANNOTATION] = format_fetch_rate(rate)
    return NodeMetadata(labels=labels, annotations=annotations)


def _done(model: ModelState, shown: int | None, progress: bool) -> int | None:
    """``bytes_done`` to advertise: the new value when it moved materially and progress may be
    written now, else the one the Node shows (kept as it is: no write for it)."""
    if model.bytes_done is None:
        return None
    if progress and progress_changed(shown, model.bytes_done, model.bytes or None):
        return model.bytes_done
    return shown


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
        if key not in desired.labels and is_model_label(key):
            labels[key] = None
    annotations: dict[str, str | None] = {
        key: value for key, value in desired.annotations.items() if current.annotations.get(key) != value
    }
    return NodePatch(labels=dict(sorted(labels.items())), annotations=dict(sorted(annotations.items())))


def metadata_of(node: Mapping[str, object]) -> NodeMetadata:
    """Labels and annotations of a Node object as the API returns it (missing maps are empty)."""
    meta = mapping(node.get("metadata"))
    return NodeMetadata(labels=str_map(meta.get("labels")), annotations=str_map(meta.get("annotations")))


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=False, ensure_ascii=False)
