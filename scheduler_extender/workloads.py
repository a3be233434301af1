"""The workloads ``replicas: auto`` distributions refer to, read with GETs (no watch) and cached.

A Deployment or a HorizontalPodAutoscaler (KEDA creates one, so a ScaledObject is named through
its HPA, ``keda-hpa-<name>``) is re-read at most every ``ttl`` seconds per reference: the
reconciler passes at least every ``ttl`` while an auto distribution exists, so a change of
``maxReplicas`` or of the replicas shows within about ``ttl`` seconds. Cost: one or two GETs per
auto distribution per ``ttl`` (15 s), and RBAC needs only ``get`` on the two kinds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from locality.contract import mapping
from locality.kube import KubeError, NotFound
from scheduler_extender.ramp import Lookup, WorkloadRef, from_deployment, from_hpa

log = logging.getLogger(__name__)


class Workloads:
    """Reads workloads through ``kube.get_workload``; answers from a ``ttl`` cache in between."""

    def __init__(self, kube: Any, *, ttl: float, clock: Callable[[], float]) -> None:
        self._kube, self.ttl, self._clock = kube, ttl, clock
        self._cache: dict[WorkloadRef, tuple[float, Lookup]] = {}

    async def get(self, ref: WorkloadRef) -> Lookup:
        now = self._clock()
        hit = self._cache.get(ref)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        lookup = await self._read(ref)
        self._cache[ref] = (now, lookup)
        return lookup

    def forget_except(self, refs: set[WorkloadRef]) -> None:
        """Drop cached workloads no distribution refers to any more."""
        for ref in [r for r in self._cache if r not in refs]:
            del self._cache[ref]

    async def _read(self, ref: WorkloadRef) -> Lookup:
        try:
            obj = await self._kube.get_workload(ref.kind, ref.namespace, ref.name)
            if ref.kind == "Deployment":
                return Lookup(from_deployment(obj))
            return Lookup(from_hpa(obj, await self._target(ref.namespace, obj)))
        except NotFound:
            return Lookup(None, f"{ref.describe()} not found")
        except KubeError as exc:
            log.warning("cannot read %s: %s", ref.describe(), exc)
            return Lookup(None, f"cannot read {ref.describe()}: {exc}")

    async def _target(self, namespace: str, hpa: dict[str, Any]) -> dict[str, Any] | None:
        """The Deployment an HPA scales (for GPUs per pod); None for other kinds or when unreadable."""
        target = mapping(mapping(hpa.get("spec")).get("scaleTargetRef"))
        if target.get("kind") != "Deployment" or not isinstance(target.get("name"), str):
            return None
        try:
            dep: dict[str, Any] = await self._kube.get_workload("Deployment", namespace, target["name"])
        except KubeError as exc:
            log.info("HPA target Deployment %s/%s not readable: %s", namespace, target["name"], exc)
            return None
        return dep
