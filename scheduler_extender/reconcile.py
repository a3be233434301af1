"""Distribution reconciler: recompute each ModelDistribution's status when nodes or specs change.

The extender is the only writer of ``status`` and writes it only when it changed, at most once
per distribution per ``status_interval_seconds`` (every agent watches these objects, so each
write fans out cluster-wide). Two extender replicas need no leader election: targets are a
deterministic function of the same watched state (``specs.desired_status``), the condition's
``lastTransitionTime`` is kept from the stored status while unchanged, and a merge patch of an
identical status is idempotent, so concurrent writers converge on one answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from locality.kube import KubeError, NotFound
from locality.timestamps import rfc3339
from scheduler_extender.metrics import Metrics
from scheduler_extender.nodecache import NodeCache
from scheduler_extender.ramp import WorkloadRef
from scheduler_extender.specs import (
    AUTO,
    AutoInputs,
    InvalidSpec,
    as_object,
    desired_status,
    node_view,
    parse_spec,
)
from scheduler_extender.workloads import Workloads

log = logging.getLogger(__name__)

STATE_BY_REASON = {
    "TargetsReady": "ready",
    "Fetching": "progressing",
    "NotEnoughNodes": "unsatisfiable",
    "InvalidSpec": "invalid",
    "WorkloadUnavailable": "unsatisfiable",
}
# A burst of Node events (a re-list, a rollout of agents) becomes one pass; a pass costs about
# (distributions x nodes) work on the loop that also answers the scheduler, so not more often.
DEBOUNCE_SECONDS = 0.25


# Keys of ours that only some statuses carry: a stored one the desired status lacks is removed.
OPTIONAL_KEYS = ("auto",)


def needs_write(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """True when a key we own differs between the stored and the desired status."""
    return any(current.get(k) != v for k, v in desired.items()) or bool(_stale(current, desired))


def _stale(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, None]:
    """Merge-patch removals of optional keys the desired status no longer has."""
    return {k: None for k in OPTIONAL_KEYS if k in current and k not in desired}


class Reconciler:
    """Keeps every distribution's status equal to ``desired_status`` (throttled)."""

    def __init__(
        self,
        kube: Any,
        cache: NodeCache,
        items: Mapping[str, dict[str, Any]],
        *,
        trigger: asyncio.Event,
        interval: float,
        clock: Callable[[], float],
        wall: Callable[[], float],
        metrics: Metrics,
        ready: Callable[[], bool],
        workloads: Workloads | None = None,
        cold_seconds: Callable[[str], float | None] = lambda _model: None,
        default_cold_seconds: float = 300.0,
    ) -> None:
        self._kube, self._cache, self._items = kube, cache, items
        self._interval, self._clock, self._wall = interval, clock, wall
        self.metrics, self._ready = metrics, ready
        self._last_write: dict[str, float] = {}
        self.trigger = trigger
        self._workloads, self._cold_seconds = workloads, cold_seconds
        self._default_cold = default_cold_seconds
        self._auto_seen = False  # an auto distribution exists: pass at least every workload ttl

    async def run(self, idle_seconds: float = 30.0) -> None:
        """Pass on every trigger, on a retry that is due, and at least every ``idle_seconds``."""
        wait = idle_seconds
        while True:
            try:
                await asyncio.wait_for(self.trigger.wait(), timeout=wait)
            except TimeoutError:
                pass
            await asyncio.sleep(DEBOUNCE_SECONDS)
            self.trigger.clear()
            if not self._ready():
                wait = 0.2
                continue
            retry = await self.reconcile_once()
            wait = idle_seconds if retry is None else max(retry, DEBOUNCE_SECONDS)
            if self._auto_seen and self._workloads is not None:
                wait = min(wait, max(self._workloads.ttl, DEBOUNCE_SECONDS))

    async def reconcile_once(self) -> float | None:
        """One pass over every distribution; returns seconds until a throttled write is due."""
        now = self._clock()
        stamp = rfc3339(self._wall())
        retry: float | None = None
        by_state: dict[str, int] = dict.fromkeys(STATE_BY_REASON.values(), 0)
        targets_by_state: dict[str, int] = {}
        refs: set[WorkloadRef] = set()
        for name, obj in list(self._items.items()):
            # One distribution costs ~O(nodes) (a few ms at 5,000 nodes) on the loop that answers
            # the scheduler: let waiting requests in between distributions.
            await asyncio.sleep(0)
            current = as_object(obj.get("status"))
            auto = await self._auto_inputs(obj, refs)
            desired = desired_status(obj, self._cache.index, stamp, auto)
            self._count(desired, by_state, targets_by_state)
            if not needs_write(current, desired):
                continue
            wait = self._interval - (now - self._last_write.get(name, float("-inf")))
            if wait > 0:
                retry = wait if retry is None else min(retry, wait)
                continue
            await self._write(name, {**desired, **_stale(current, desired)})
        self._forget_deleted()
        self._auto_seen = bool(refs)
        if self._workloads is not None:
            self._workloads.forget_except(refs)
        for state, count in by_state.items():
            self.metrics.distributions.labels(state).set(count)
        for state in ("queued", "fetching", "ready", "failed", "evicting"):
            self.metrics.distribution_targets.labels(state).set(targets_by_state.get(state, 0))
        return retry

    async def _auto_inputs(self, obj: Mapping[str, Any], refs: set[WorkloadRef]) -> AutoInputs | None:
        """The workload (cached GET) and cold time to ready of a ``replicas: auto`` distribution."""
        try:
            spec = parse_spec(obj.get("spec"))
        except InvalidSpec:
            return None
        if spec.replicas != AUTO or spec.workload is None or self._workloads is None:
            return None
        refs.add(spec.workload)
        lookup = await self._workloads.get(spec.workload)
        measured = self._cold_seconds(spec.ref.id)
        if measured is None:
            return AutoInputs(lookup, self._default_cold, "default")
        return AutoInputs(lookup, measured, "measured")

    async def _write(self, name: str, status: dict[str, Any]) -> None:
        self._last_write[name] = self._clock()
        try:
            await self._kube.patch_distribution_status(name, status)
        except NotFound:
            self.metrics.status_writes.labels("gone").inc()
            return
        except KubeError as exc:
            self.metrics.status_writes.labels("error").inc()
            log.warning("status write of distribution %s failed: %s; will retry", name, exc)
            self.trigger.set()
            return
        self.metrics.status_writes.labels("ok").inc()
        log.info(
            "distribution %s: %s/%s ready on %s",
            name,
            status.get("ready"),
            status.get("desired"),
            ",".join(status.get("targets", [])[:10]) or "no nodes",
        )

    def _count(self, desired: dict[str, Any], by_state: dict[str, int], targets: dict[str, int]) -> None:
        reason = desired["conditions"][0]["reason"]
        state = STATE_BY_REASON.get(reason, "invalid")
        by_state[state] = by_state.get(state, 0) + 1
        if "modelId" in desired:
            view = node_view(desired["modelId"], desired["label"], desired["targets"], self._cache.index)
            for name in desired["targets"]:
                node_state = view[name]["state"]
                targets[node_state] = targets.get(node_state, 0) + 1

    def _forget_deleted(self) -> None:
        for name in [n for n in self._last_write if n not in self._items]:
            del self._last_write[name]
