"""Warm capacity from the ramp (pure): how many nodes must hold a model for ``replicas: auto``.

nodes = ceil(R(T) / podsPerNode), where T is the cold time to ready (measured, else a stated
default), R(T) the replicas the autoscaler can reach before the first cold replica it adds is
Ready (its ``behavior.scaleUp`` policies applied at every HPA sync, capped at ``maxReplicas``),
and podsPerNode = GPUs per node // GPUs per pod (1 when either is unknown). Without an HPA the
workload does not grow by itself: R(T) = its replicas. docs/time-to-ready.md has a worked example.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from locality.contract import mapping

HPA_SYNC_SECONDS = 15  # kube-controller-manager --horizontal-pod-autoscaler-sync-period default
GPU = "nvidia.com/gpu"


@dataclass(frozen=True, slots=True)
class Policy:
    """One HPA scaling policy: ``Pods`` or ``Percent`` ``value`` per ``period`` seconds."""

    type: str
    value: int
    period: int

    def describe(self) -> str:
        unit = "%" if self.type == "Percent" else " pods"
        return f"{self.value}{unit}/{self.period}s"


# autoscaling/v2 defaults for scale-up: the larger of +100% or +4 pods every 15 s.
DEFAULT_POLICIES = (Policy("Percent", 100, 15), Policy("Pods", 4, 15))


@dataclass(frozen=True, slots=True)
class ScaleUp:
    """``behavior.scaleUp`` of an HPA (``select``: Max, Min or Disabled)."""

    policies: tuple[Policy, ...] = DEFAULT_POLICIES
    select: str = "Max"

    def describe(self) -> str:
        if self.select == "Disabled":
            return "scale-up disabled"
        return f"{self.select.lower()}({', '.join(p.describe() for p in self.policies)})"


@dataclass(frozen=True, slots=True)
class Workload:
    """What the sizing needs from the workload: replicas now, the autoscaler's limits, GPUs/pod."""

    source: str  # e.g. "HorizontalPodAutoscaler ns/name -> Deployment ns/name"
    current: int
    max_replicas: int | None = None  # None: no autoscaler
    scale_up: ScaleUp | None = None  # None: no autoscaler (the workload does not grow by itself)
    gpus_per_pod: int = 0  # 0: unknown


@dataclass(frozen=True, slots=True)
class WorkloadRef:
    """``spec.workload`` of a distribution."""

    kind: str  # Deployment | HorizontalPodAutoscaler
    namespace: str
    name: str

    def describe(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Lookup:
    """A workload as read (``workloads.Workloads``), or why it could not be."""

    workload: Workload | None
    error: str | None = None


def parse_scale_up(behavior: object) -> ScaleUp:
    """``spec.behavior`` of an autoscaling/v2 HPA -> its scale-up rules (defaults filled in)."""
    rules = mapping(mapping(behavior).get("scaleUp"))
    select = rules.get("selectPolicy")
    policies = tuple(
        Policy(str(p.get("type")), int(p["value"]), int(p.get("periodSeconds") or HPA_SYNC_SECONDS))
        for p in rules.get("policies") or []
        if isinstance(p, dict) and p.get("type") in ("Pods", "Percent") and isinstance(p.get("value"), int)
    )
    return ScaleUp(policies or DEFAULT_POLICIES, select if select in ("Max", "Min", "Disabled") else "Max")


def gpus_per_pod(template_spec: object) -> int:
    """GPUs one pod of a pod template asks for: the sum of its containers' GPU limits (else requests)."""
    total = 0
    for container in mapping(template_spec).get("containers") or []:
        resources = mapping(mapping(container).get("resources"))
        value = mapping(resources.get("limits")).get(GPU, mapping(resources.get("requests")).get(GPU))
        total += int(value) if isinstance(value, int | str) and str(value).isdigit() else 0
    return total


def from_deployment(dep: Mapping[str, Any]) -> Workload:
    """A Deployment without an autoscaler: its replicas (the larger of spec and status)."""
    spec, status, meta = mapping(dep.get("spec")), mapping(dep.get("status")), mapping(dep.get("metadata"))
    current = max(_int(spec.get("replicas"), 1), _int(status.get("replicas"), 0))
    template = mapping(mapping(spec.get("template")).get("spec"))
    source = f"Deployment {meta.get('namespace')}/{meta.get('name')}"
    return Workload(source, current, gpus_per_pod=gpus_per_pod(template))


def from_hpa(hpa: Mapping[str, Any], target: Mapping[str, Any] | None) -> Workload:
    """An HPA (and the Deployment it scales, for GPUs per pod, when readable)."""
    spec, status, meta = mapping(hpa.get("spec")), mapping(hpa.get("status")), mapping(hpa.get("metadata"))
    low = _int(spec.get("minReplicas"), 1)
    current = max(low, _int(status.get("currentReplicas"), 0), _int(status.get("desiredReplicas"), 0))
    top = max(current, _int(spec.get("maxReplicas"), current))
    ref = mapping(spec.get("scaleTargetRef"))
    hpa_name = f"{meta.get('namespace')}/{meta.get('name')}"
    source = f"HorizontalPodAutoscaler {hpa_name} -> {ref.get('kind')} {ref.get('name')}"
    gpus = from_deployment(target).gpus_per_pod if target is not None else 0
    return Workload(source, current, top, parse_scale_up(spec.get("behavior")), gpus)


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def replicas_after(
    current: int, top: int, rules: ScaleUp, seconds: float, sync: int = HPA_SYNC_SECONDS
) -> int:
    """Replicas the HPA can reach within ``seconds`` when every sync (t = 0, sync, ... < seconds)
    wants more: per policy, the replicas at the start of its period plus ``value`` pods or
    ``value`` percent (rounded up), the Max (or Min) of the policies, capped at ``top``
    (kube-controller-manager's calculateScaleUpLimitWithScalingRules)."""
    replicas = min(current, top)
    if rules.select == "Disabled":
        return replicas
    events: list[tuple[int, int]] = []  # (time, replicas added)
    pick = min if rules.select == "Min" else max
    for tick in range(0, max(0, math.ceil(seconds)), sync):
        proposals = []
        for policy in rules.policies:
            start = replicas - sum(n for t, n in events if t > tick - policy.period)
            if policy.type == "Pods":
                proposals.append(start + policy.value)
            else:
                proposals.append(math.ceil(start * (1 + policy.value / 100)))
        grown = min(top, max(replicas, pick(proposals)))
        if grown > replicas:
            events.append((tick, grown - replicas))
        replicas = grown
        if replicas >= top:
            break
    return replicas


def pods_per_node(gpus_per_node: Sequence[int], per_pod: int) -> int:
    """GPUs of the smallest eligible GPU node // GPUs per pod; 1 when either is unknown."""
    sizes = [g for g in gpus_per_node if g > 0]
    if per_pod <= 0 or not sizes:
        return 1
    return max(1, min(sizes) // per_pod)


def warm_nodes(workload: Workload, cold_seconds: float, per_node: int) -> tuple[int, dict[str, Any]]:
    """(nodes, the inputs and the arithmetic for the status)."""
    if workload.scale_up is None or workload.max_replicas is None:
        reached = workload.current
        rules = "no autoscaler"
    else:
        reached = replicas_after(workload.current, workload.max_replicas, workload.scale_up, cold_seconds)
        rules = workload.scale_up.describe()
    nodes = max(1, math.ceil(reached / per_node))
    arithmetic = (
        f"ceil(R({cold_seconds:g}s) / podsPerNode) = ceil({reached} / {per_node}) = {nodes}; "
        f"R = replicas {workload.current} grown by {rules}"
        + (f", capped at maxReplicas {workload.max_replicas}" if workload.max_replicas is not None else "")
    )
    return nodes, {
        "workload": workload.source,
        "currentReplicas": workload.current,
        "maxReplicas": workload.max_replicas,
        "scaleUp": rules,
        "replicasAfterColdStart": reached,
        "gpusPerPod": workload.gpus_per_pod,
        "podsPerNode": per_node,
        "arithmetic": arithmetic,
    }
