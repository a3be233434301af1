"""ModelDistribution spec and status: validation, the desired status, and per-node views (pure).

The object (``model-locality.io/v1alpha1``, cluster-scoped, CRD in ``manifests/``)::

    spec:   {uri, nodeSelector: {label: value} (optional), replicas: N >= 1 | "all" (default "all"),
             revision (optional: the revision the origin must hold, e.g. a commit sha)}
    status: {modelId, label, targets: [node], desired, ready, observedGeneration, conditions}

The extender is the only writer of ``status``. Per-node state is not stored in the object (a
status write fans out to every agent watching it); it is read from the nodes' own
``model-locality.io/models`` annotations when a client asks (``node_view``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from locality.identity import InvalidURI, ModelRef, model_ref
from scheduler_extender.index import NodeIndex
from scheduler_extender.targets import ALL, Want, choose_targets, eligible

SPEC_FIELDS = ("uri", "nodeSelector", "replicas", "revision")
MAX_SELECTOR = 32
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_REVISION = re.compile(r"^[0-9A-Za-z._-]{1,128}$")  # the agent's POST /v1/models ``revision``
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class InvalidSpec(ValueError):
    """A distribution spec that cannot be acted on; the message says why."""


@dataclass(frozen=True, slots=True)
class Spec:
    """A validated distribution spec."""

    ref: ModelRef
    node_selector: Mapping[str, str]
    replicas: int | str
    revision: str | None = None  # None: the origin's latest

    def want(self, model_bytes: int | None) -> Want:
        return Want(self.ref.id, self.ref.label_key, self.replicas, self.node_selector, model_bytes)

    def as_dict(self) -> dict[str, Any]:
        out = {"uri": self.ref.uri, "nodeSelector": dict(self.node_selector), "replicas": self.replicas}
        return out if self.revision is None else {**out, "revision": self.revision}


def parse_spec(spec: object) -> Spec:
    """Validate a spec (REST body or custom resource); raise ``InvalidSpec`` with the reason."""
    if not isinstance(spec, dict):
        raise InvalidSpec("spec must be an object")
    unknown = sorted(str(k) for k in spec if k not in SPEC_FIELDS)
    if unknown:
        raise InvalidSpec(f"unknown field(s): {', '.join(unknown)}")
    if "uri" not in spec:
        raise InvalidSpec("missing field: uri")
    try:
        ref = model_ref(spec["uri"])
    except InvalidURI as exc:
        raise InvalidSpec(str(exc)) from None
    selector, replicas = _selector(spec.get("nodeSelector")), _replicas(spec.get("replicas", ALL))
    return Spec(ref, selector, replicas, _revision(spec.get("revision")))


def _revision(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _REVISION.match(value):
        raise InvalidSpec("revision must be 1-128 characters of [0-9A-Za-z._-] (e.g. a commit sha)")
    return value


def _replicas(value: object) -> int | str:
    if value == ALL:
        return ALL
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec('replicas must be a positive integer or "all"')
    if value < 1:
        raise InvalidSpec(f'replicas must be at least 1 (or "all"), not {value}')
    if value > 100_000:
        raise InvalidSpec("replicas is larger than any cluster")
    return value


def _selector(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidSpec("nodeSelector must be an object of label: value strings")
    if len(value) > MAX_SELECTOR:
        raise InvalidSpec(f"nodeSelector has more than {MAX_SELECTOR} labels")
    for key, val in value.items():
        if not isinstance(val, str):
            raise InvalidSpec(f"nodeSelector value of {key!r} must be a string")
        if not _label_key_ok(key):
            raise InvalidSpec(f"nodeSelector key {key[:100]!r} is not a valid label key")
        if len(val) > 63 or not _LABEL_VALUE.match(val):
            raise InvalidSpec(f"nodeSelector value {val[:100]!r} is not a valid label value")
    return dict(value)


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if "/" in prefix or (key.count("/") == 1 and not prefix):
        return False
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME.match(name))


def desired_status(obj: Mapping[str, Any], index: NodeIndex, now_iso: str) -> dict[str, Any]:
    """The status the extender wants on a ModelDistribution object, given the current nodes.

    targets = ``choose_targets`` (previous targets kept while eligible); desired = replicas, or
    the number of eligible nodes for "all"; ready = targets with the model's label ``ready``.
    A condition ``Ready`` says whether every desired target is ready, with the reason.
    """
    meta = as_object(obj.get("metadata"))
    old = as_object(obj.get("status"))
    generation = meta.get("generation")
    generation = generation if isinstance(generation, int) else 0
    try:
        spec = parse_spec(obj.get("spec"))
    except InvalidSpec as exc:
        cond = _condition(old, "False", "InvalidSpec", str(exc), gen=generation, now=now_iso)
        return {
            "targets": [],
            "desired": 0,
            "ready": 0,
            "observedGeneration": generation,
            "conditions": [cond],
        }
    previous = old.get("targets")
    previous = previous if isinstance(previous, list) else []
    want = spec.want(index.sizes.get(spec.ref.id))
    nodes = list(index)
    targets = list(choose_targets(want, nodes, [t for t in previous if isinstance(t, str)]))
    desired = len(eligible(want, nodes)) if spec.replicas == ALL else int(spec.replicas)
    holders = index.holders(spec.ref.label_key)
    ready = sum(1 for t in targets if t in holders)
    if len(targets) < desired:
        status, reason = "False", "NotEnoughNodes"
        message = f"{len(targets)} eligible node(s) for {desired} replica(s)"
    elif ready >= desired:
        status, reason, message = "True", "TargetsReady", f"{ready}/{desired} target(s) ready"
    else:
        status, reason, message = "False", "Fetching", f"{ready}/{desired} target(s) ready"
    return {
        "modelId": spec.ref.id,
        "label": spec.ref.label_key,
        "targets": targets,
        "desired": desired,
        "ready": ready,
        "observedGeneration": generation,
        "conditions": [_condition(old, status, reason, message, gen=generation, now=now_iso)],
    }


def _condition(
    old: Mapping[str, Any], status: str, reason: str, message: str, *, gen: int, now: str
) -> dict[str, Any]:
    """A metav1.Condition of type Ready; lastTransitionTime moves only when ``status`` flips."""
    conditions = old.get("conditions")
    previous = (
        next((c for c in conditions or [] if isinstance(c, dict) and c.get("type") == "Ready"), None)
        if isinstance(conditions, list)
        else None
    )
    since = previous.get("lastTransitionTime") if previous and previous.get("status") == status else None
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": gen,
        "lastTransitionTime": since or now,
    }


def as_object(value: object) -> dict[str, Any]:
    """``value`` when it is a JSON object, else ``{}`` (objects from the API may hold anything)."""
    return value if isinstance(value, dict) else {}


def node_view(model_id: str, label_key: str, names: Sequence[str], index: NodeIndex) -> dict[str, Any]:
    """Per-node state of one model on ``names`` plus every node where it is ready.

    state: ``ready`` when the node carries the label; else the agent's reported state
    (queued/fetching/ready/failed/evicting); ``queued`` for a target whose agent has not reported.
    bytes: the total size the agent reported, when known.
    """
    out: dict[str, Any] = {}
    for name in sorted({*names, *index.holders(label_key)}):
        node = index.get(name)
        entry = node.models.get(model_id) if node else None
        if node is not None and label_key in node.ready_labels:
            state = "ready"
        else:
            state = entry.state if entry is not None else "queued"
        out[name] = {"state": state, "bytes": entry.bytes if entry and entry.bytes is not None else None}
    return out
