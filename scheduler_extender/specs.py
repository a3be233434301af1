"""ModelDistribution spec and status: validation, the desired status, and per-node views (pure).

The object (``model-locality.io/v1alpha1``, cluster-scoped, CRD in ``manifests/``)::

    spec:   {uri, nodeSelector: {label: value} (optional), replicas: N >= 1 | "all" | "auto" (default
             "all"), revision (optional: the revision the origin must hold, e.g. a commit sha),
             workload: {kind: Deployment | HorizontalPodAutoscaler, namespace, name} (with "auto" only)}
    status: {modelId, label, targets: [node], desired, ready, observedGeneration, conditions,
             auto: {the inputs and arithmetic of ``ramp.warm_nodes``, coldStartSeconds, coldStartSource}}

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
from scheduler_extender.nodes import NodeState
from scheduler_extender.ramp import Lookup, WorkloadRef, pods_per_node, warm_nodes
from scheduler_extender.targets import ALL, Want, choose_targets, eligible

AUTO = "auto"
WORKLOAD_KINDS = ("Deployment", "HorizontalPodAutoscaler")
SPEC_FIELDS = ("uri", "nodeSelector", "replicas", "revision", "workload")
MAX_SELECTOR = 32
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_REVISION = re.compile(r"^[0-9A-Za-z._-]{1,128}$")  # the agent's POST /v1/models ``revision``
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class InvalidSpec(ValueError):
    """A distribution spec that cannot be acted on; the message says why."""


@dataclass(frozen=True, slots=True)
class Spec:
    """A validated distribution spec."""

    ref: ModelRef
    node_selector: Mapping[str, str]
    replicas: int | str
    revision: str | None = None  # None: the origin's latest
    workload: WorkloadRef | None = None  # replicas "auto" only

    def want(self, model_bytes: int | None, count: int | None = None) -> Want:
        """What to place; ``count`` replaces ``replicas: auto`` (1 when not computed yet)."""
        replicas = (count or 1) if self.replicas == AUTO else self.replicas
        return Want(self.ref.id, self.ref.label_key, replicas, self.node_selector, model_bytes)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "uri": self.ref.uri,
            "nodeSelector": dict(self.node_selector),
            "replicas": self.replicas,
        }
        if self.workload is not None:
            w = self.workload
            out["workload"] = {"kind": w.kind, "namespace": w.namespace, "name": w.name}
        return out if self.revision is None else {**out, "revision": self.revision}


@dataclass(frozen=True, slots=True)
class AutoInputs:
    """What ``replicas: auto`` is computed from besides the nodes: the workload as read, and the
    cold time to ready to use with where it came from."""

    lookup: Lookup
    cold_seconds: float
    cold_source: str  # "measured" (p90 of recent cold starts) or "default"


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
    workload = _workload(spec.get("workload"))
    if (replicas == AUTO) != (workload is not None):
        raise InvalidSpec('replicas: "auto" needs a workload {kind, namespace, name}, and only it uses one')
    return Spec(ref, selector, replicas, _revision(spec.get("revision")), workload)


def _workload(value: object) -> WorkloadRef | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"kind", "namespace", "name"}:
        raise InvalidSpec("workload must be an object with exactly kind, namespace and name")
    kind, namespace, name = value["kind"], value["namespace"], value["name"]
    if kind not in WORKLOAD_KINDS:
        raise InvalidSpec(f"workload.kind must be one of {', '.join(WORKLOAD_KINDS)}")
    if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace):
        raise InvalidSpec("workload.namespace is not a valid namespace name")
    if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise InvalidSpec("workload.name is not a valid object name")
    return WorkloadRef(kind, namespace, name)


def _revision(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _REVISION.match(value):
        raise InvalidSpec("revision must be 1-128 characters of [0-9A-Za-z._-] (e.g. a commit sha)")
    return value


def _replicas(value: object) -> int | str:
    if value in (ALL, AUTO):
        return str(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec('replicas must be a positive integer, "all" or "auto"')
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


def desired_status(
    obj: Mapping[str, Any], index: NodeIndex, now_iso: str, auto: AutoInputs | None = None
) -> dict[str, Any]:
    """The status the extender wants on a ModelDistribution object, given the current nodes.

    targets = ``choose_targets`` (previous targets kept while eligible); desired = replicas, the
    number of eligible nodes for "all", or for "auto" ``ramp.warm_nodes`` of ``auto`` (while the
    workload cannot be read: the last desired count, never fewer warm nodes over an API hiccup);
    ready = targets with the model's label ``ready``. A condition ``Ready`` says whether every
    desired target is ready, with the reason.
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
    nodes = list(index)
    count, auto_status, problem = None, None, None
    if spec.replicas == AUTO:
        count, auto_status, problem = _auto(spec, nodes, auto, old)
    want = spec.want(index.sizes.get(spec.ref.id), count)
    targets = list(choose_targets(want, nodes, [t for t in previous if isinstance(t, str)]))
    desired = len(eligible(want, nodes)) if spec.replicas == ALL else int(want.replicas)
    holders = index.holders(spec.ref.label_key)
    ready = sum(1 for t in targets if t in holders)
    status, reason, message = _verdict(len(targets), ready, desired, problem)
    out = {
        "modelId": spec.ref.id,
        "label": spec.ref.label_key,
        "targets": targets,
        "desired": desired,
        "ready": ready,
        "observedGeneration": generation,
        "conditions": [_condition(old, status, reason, message, gen=generation, now=now_iso)],
    }
    return out if auto_status is None else {**out, "auto": auto_status}


def _verdict(targets: int, ready: int, desired: int, problem: str | None) -> tuple[str, str, str]:
    if problem is not None:
        return "False", "WorkloadUnavailable", problem
    if targets < desired:
        return "False", "NotEnoughNodes", f"{targets} eligible node(s) for {desired} replica(s)"
    if ready >= desired:
        return "True", "TargetsReady", f"{ready}/{desired} target(s) ready"
    return "False", "Fetching", f"{ready}/{desired} target(s) ready"


def _auto(
    spec: Spec, nodes: Sequence[NodeState], auto: AutoInputs | None, old: Mapping[str, Any]
) -> tuple[int, dict[str, Any] | None, str | None]:
    """(node count, status.auto, problem) of a ``replicas: auto`` spec."""
    last = old.get("desired")
    fallback = last if isinstance(last, int) and last > 0 else 1
    if auto is None:
        return fallback, as_object(old.get("auto")) or None, "workload not read yet"
    workload = auto.lookup.workload
    if workload is None:
        return fallback, as_object(old.get("auto")) or None, auto.lookup.error or "workload unreadable"
    gpus = [n.gpus for n in eligible(spec.want(None), nodes)]
    count, inputs = warm_nodes(workload, auto.cold_seconds, pods_per_node(gpus, workload.gpus_per_pod))
    inputs = {k: v for k, v in inputs.items() if v is not None}
    inputs["coldStartSeconds"] = round(auto.cold_seconds, 1)
    inputs["coldStartSource"] = auto.cold_source
    return count, inputs, None


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
