"""The fleet as rows: models x nodes, nodes' caches and pins, distributions; pure, from API objects.

Nodes are read as their agents write them, through ``locality.contract``'s parsers: model labels,
the models annotation (``{id: {uri, bytes, state, revision?, bytes_done?}}``), the cache and the
fetch-rate annotations. Optional fields are shown when present; unknown ones are ignored; junk
never raises. Pins are derived as the agents derive them: a model is
pinned on a node while a pod bound there asks for it or a ModelDistribution targets the node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from locality.contract import (
    CACHE_ANNOTATION,
    FETCH_RATE_ANNOTATION,
    MODELS_ANNOTATION,
    READY,
    mapping,
    parse_cache_annotation,
    parse_fetch_rate,
    parse_models_annotation,
    pod_models,
    str_map,
)
from locality.identity import InvalidURI, is_model_label, model_ref

Obj = Mapping[str, Any]
FINISHED_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True, slots=True)
class ModelRow:
    """One model on one node."""

    node: str
    model_id: str  # 16 hex digits; 8 when only the label is known
    uri: str  # "" when only the label is known (the annotation had no room for the entry)
    state: str
    bytes: int | None
    bytes_done: int | None
    revision: str | None
    label_key: str | None
    labelled: bool  # the Node carries <label key>=ready
    pinned_by: tuple[str, ...] = ()  # "pod:<ns>/<name>", "distribution:<name>"

    @property
    def progress(self) -> float | None:
        """Fraction fetched: 1 when ready, bytes_done/bytes while fetching, else unknown."""
        if self.state == READY:
            return 1.0
        if self.bytes_done is not None and self.bytes:
            return min(1.0, self.bytes_done / self.bytes)
        return 0.0 if self.state == "queued" else None


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node's cache: use against quota, model counts by state, pinned models."""

    node: str
    ready: bool
    schedulable: bool
    used_bytes: int | None
    quota_bytes: int | None
    states: Mapping[str, int]
    pinned: int
    pinned_bytes: int
    fetch_rate: int | None  # bytes/s the node's agent measured (fetch-rate annotation)
    problem: str | None

    @property
    def use(self) -> float | None:
        if self.used_bytes is None or not self.quota_bytes:
            return None
        return self.used_bytes / self.quota_bytes


@dataclass(frozen=True, slots=True)
class DistributionRow:
    """One ModelDistribution: desired and ready nodes, as its status says."""

    name: str
    uri: str
    model_id: str
    replicas: str
    desired: int | None
    ready: int | None
    targets: tuple[str, ...]
    condition: str  # Ready | Progressing | <reason of a False condition> | Pending
    message: str
    created: str


def node_name(node: Obj) -> str:
    name = mapping(node.get("metadata")).get("name")
    return name if isinstance(name, str) else ""


def model_rows(node: Obj, pins: Mapping[tuple[str, str], tuple[str, ...]] | None = None) -> list[ModelRow]:
    """Every model the Node's annotation or labels name, sorted by URI then id."""
    meta = mapping(node.get("metadata"))
    name = node_name(node)
    labels, annotations = str_map(meta.get("labels")), mapping(meta.get("annotations"))
    entries, _ = parse_models_annotation(annotations.get(MODELS_ANNOTATION))
    pins = pins or {}
    rows: list[ModelRow] = []
    seen_labels: set[str] = set()
    for mid, entry in entries.items():
        key = _label_key(entry.uri)
        seen_labels.add(key or "")
        rows.append(
            ModelRow(
                node=name,
                model_id=mid,
                uri=entry.uri,
                state=entry.state,
                bytes=entry.bytes,
                bytes_done=entry.bytes_done,
                revision=entry.revision,
                label_key=key,
                labelled=key is not None and labels.get(key) == READY,
                pinned_by=pins.get((name, mid), ()),
            )
        )
    rows += _label_only_rows(name, labels, seen_labels)
    return sorted(rows, key=lambda r: (r.uri, r.model_id))


def _label_only_rows(node: str, labels: Mapping[str, str], seen: set[str]) -> list[ModelRow]:
    """Ready labels without an annotation entry (the agent drops entries past 64 KiB, never labels)."""
    return [
        ModelRow(node, key.rsplit(".", 1)[1], "", READY, None, None, None, key, True)
        for key, value in sorted(labels.items())
        if value == READY and is_model_label(key) and key not in seen
    ]


def _label_key(uri: str) -> str | None:
    try:
        return model_ref(uri).label_key
    except InvalidURI:
        return None  # a redacted or foreign URI: no label to check


def _non_negative_int(value: object) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None  # type: ignore[return-value]


def node_row(node: Obj, pins: Mapping[tuple[str, str], tuple[str, ...]] | None = None) -> NodeRow:
    """The Node's cache use, model counts by state and pinned models."""
    meta, spec = mapping(node.get("metadata")), mapping(node.get("spec"))
    annotations = mapping(meta.get("annotations"))
    usage, cache_problem = parse_cache_annotation(annotations.get(CACHE_ANNOTATION))
    _, models_problem = parse_models_annotation(annotations.get(MODELS_ANNOTATION))
    rate, rate_problem = parse_fetch_rate(annotations.get(FETCH_RATE_ANNOTATION))
    models = model_rows(node, pins)
    states: dict[str, int] = {}
    for row in models:
        states[row.state] = states.get(row.state, 0) + 1
    pinned = [row for row in models if row.pinned_by]
    return NodeRow(
        node=node_name(node),
        ready=_ready(mapping(node.get("status")).get("conditions")),
        schedulable=spec.get("unschedulable") is not True,
        used_bytes=usage.used_bytes if usage else None,
        quota_bytes=usage.quota_bytes if usage else None,
        states=states,
        pinned=len(pinned),
        pinned_bytes=sum(row.bytes or 0 for row in pinned),
        fetch_rate=rate,
        problem=models_problem or cache_problem or rate_problem,
    )


def _ready(conditions: object) -> bool:
    for cond in conditions if isinstance(conditions, list) else []:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def pins_of(pods: Iterable[Obj], distributions: Iterable[Obj]) -> dict[tuple[str, str], tuple[str, ...]]:
    """``(node, model id) -> reasons``: pods bound to the node (not finished) that ask for the
    model, and distributions whose status targets the node."""
    found: dict[tuple[str, str], set[str]] = {}
    for pod in pods:
        meta, spec = mapping(pod.get("metadata")), mapping(pod.get("spec"))
        node = spec.get("nodeName")
        if not isinstance(node, str) or not node:
            continue
        if mapping(pod.get("status")).get("phase") in FINISHED_PHASES:
            continue
        reason = f"pod:{meta.get('namespace')}/{meta.get('name')}"
        for ref in pod_models(mapping(meta.get("annotations"))).refs:
            found.setdefault((node, ref.id), set()).add(reason)
    for dist in distributions:
        row = distribution_row(dist)
        for node in row.targets:
            if row.model_id:
                found.setdefault((node, row.model_id), set()).add(f"distribution:{row.name}")
    return {key: tuple(sorted(reasons)) for key, reasons in found.items()}


def distribution_row(dist: Obj) -> DistributionRow:
    """A ModelDistribution's spec and status in one row (status fields missing until reconciled)."""
    meta, spec, status = mapping(dist.get("metadata")), mapping(dist.get("spec")), mapping(dist.get("status"))
    uri = spec.get("uri") if isinstance(spec.get("uri"), str) else ""
    model_id = status.get("modelId")
    if not isinstance(model_id, str) or not model_id:
        try:
            model_id = model_ref(str(uri)).id
        except InvalidURI:
            model_id = ""
    targets = status.get("targets")
    condition, message = _condition(status.get("conditions"))
    return DistributionRow(
        name=str(meta.get("name") or ""),
        uri=str(uri),
        model_id=model_id,
        replicas=str(spec.get("replicas", "all")),
        desired=_non_negative_int(status.get("desired")),
        ready=_non_negative_int(status.get("ready")),
        targets=tuple(sorted(t for t in targets if isinstance(t, str))) if isinstance(targets, list) else (),
        condition=condition,
        message=message,
        created=str(meta.get("creationTimestamp") or ""),
    )


def _condition(conditions: object) -> tuple[str, str]:
    """The one word a table shows: the reason of the first False condition, else Ready when the
    Ready condition is True, else Progressing once any condition exists, else Pending."""
    conds = [c for c in conditions if isinstance(c, Mapping)] if isinstance(conditions, list) else []
    for cond in conds:
        if cond.get("status") == "False" and cond.get("type") != "Ready":
            return str(cond.get("reason") or cond.get("type")), str(cond.get("message") or "")
    for cond in conds:
        if cond.get("type") == "Ready":
            word = READY.capitalize() if cond.get("status") == "True" else str(cond.get("reason") or "")
            return word or "Progressing", str(cond.get("message") or "")
    return ("Progressing", "") if conds else ("Pending", "")
