"""What this node should hold and pin: pods bound here and ModelDistributions that target it.

``wanted_models`` is the pure core (pods + distributions -> models with pin reasons); ``Watchers``
runs one informer per kind and hands every change of that answer to the model manager.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from agent.lifecycle.pins import Wanted
from locality.contract import mapping, pod_models
from locality.identity import InvalidURI, ModelRef, model_ref
from locality.informer import Informer
from locality.kube import Kube

log = logging.getLogger(__name__)

ACTIVE_PHASES = frozenset({"Pending", "Running"})


def pod_model_refs(pod: Mapping[str, Any]) -> tuple[list[ModelRef], list[str]]:
    """The models a pod asks for in its annotation, and one error line per URI that is not valid."""
    meta = mapping(pod.get("metadata"))
    request = pod_models(mapping(meta.get("annotations")))
    errors = [f"pod {_pod_key(meta)}: skipping {line}" for line in request.invalid]
    if request.problem and not request.invalid:
        errors.append(f"pod {_pod_key(meta)}: {request.problem}")
    return list(request.refs), errors


def wanted_models(
    pods: Iterable[Mapping[str, Any]], distributions: Iterable[Mapping[str, Any]], node_name: str
) -> Wanted:
    """Models this node should hold, each with the reasons that pin it.

    A pod pins its models with ``pod:<ns>/<name>`` while it is bound to ``node_name`` and in
    phase Pending or Running (no phase yet counts as Pending). A ModelDistribution pins its
    ``spec.uri`` with ``distribution:<name>`` while ``status.targets`` lists ``node_name``.
    Invalid URIs are skipped (``pod_model_refs`` reports them).
    """
    reasons: dict[str, set[str]] = {}
    refs: dict[str, ModelRef] = {}

    def want(ref: ModelRef, reason: str) -> None:
        refs[ref.id] = ref
        reasons.setdefault(ref.id, set()).add(reason)

    for pod in pods:
        spec, status = mapping(pod.get("spec")), mapping(pod.get("status"))
        meta = mapping(pod.get("metadata"))
        if spec.get("nodeName") != node_name or (status.get("phase") or "Pending") not in ACTIVE_PHASES:
            continue
        for ref in pod_model_refs(pod)[0]:
            want(ref, f"pod:{_pod_key(meta)}")
    for dist in distributions:
        dref = distribution_ref(dist)
        targets = mapping(dist.get("status")).get("targets")
        if dref is None or not isinstance(targets, list) or node_name not in targets:
            continue
        want(dref, f"distribution:{mapping(dist.get('metadata')).get('name', '')}")
    return {mid: (refs[mid], frozenset(r)) for mid, r in sorted(reasons.items())}


def wanted_revisions(distributions: Iterable[Mapping[str, Any]], node_name: str) -> dict[str, str]:
    """Model id -> ``spec.revision`` of the ModelDistributions that target ``node_name`` and name
    one (the agent fetches such a model only at that revision). Two distributions of one model
    naming different revisions: the first by name wins (the other cannot be served beside it)."""
    out: dict[str, str] = {}
    ordered = sorted(distributions, key=lambda d: str(mapping(d.get("metadata")).get("name", "")))
    for dist in ordered:
        dref, spec = distribution_ref(dist), mapping(dist.get("spec"))
        targets = mapping(dist.get("status")).get("targets")
        revision = spec.get("revision")
        if dref is None or not isinstance(targets, list) or node_name not in targets:
            continue
        if isinstance(revision, str) and revision and dref.id not in out:
            out[dref.id] = revision
    return out


def distribution_ref(dist: Mapping[str, Any]) -> ModelRef | None:
    """The model of a ModelDistribution, or None when ``spec.uri`` is missing or invalid."""
    uri = mapping(dist.get("spec")).get("uri")
    if not isinstance(uri, str):
        return None
    try:
        return model_ref(uri)
    except InvalidURI:
        return None


def _pod_key(meta: Mapping[str, Any]) -> str:
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"


class WantSink(Protocol):
    """What the watchers drive: the model manager."""

    def set_wanted(self, wanted: Wanted, revisions: Mapping[str, str] | None = None) -> None: ...


def _values(informer: Informer) -> list[Mapping[str, Any]]:
    return list(informer.items.values())


class Watchers:
    """Pods on this node and ModelDistributions, each through an informer; recompute on change."""

    def __init__(
        self,
        kube: Kube,
        node_name: str,
        sink: WantSink,
        *,
        resync_seconds: float = 300.0,
        on_error: Callable[[str, Exception], None] | None = None,
        gate: Any = None,  # agent.cluster.access.AccessGate: pods' models only within ModelAccessPolicies
    ) -> None:
        self.node_name = node_name
        self._sink = sink
        self._gate = gate
        self._changed = asyncio.Event()
        if gate is not None:
            gate.on_change = self._changed.set
        report = on_error or (lambda op, err: None)
        self.pods = Informer(
            kube,
            "pods",
            field_selector=f"spec.nodeName={node_name}",
            on_event=self._on_pod_event,
            on_error=lambda err: report("watch_pods", err),
            resync_seconds=resync_seconds,
        )
        self.distributions = Informer(
            kube,
            "modeldistributions",
            on_event=self._on_event,
            on_error=lambda err: report("watch_distributions", err),
            resync_seconds=resync_seconds,
        )

    def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        self._changed.set()

    def _on_pod_event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind in ("ADDED", "MODIFIED"):
            for line in pod_model_refs(obj)[1]:
                log.warning("%s", line)
        self._changed.set()

    async def run(self) -> None:
        """Run both informers; after both listed once, push the wanted set on every change."""
        tasks = [
            asyncio.create_task(self.pods.run(), name="informer-pods"),
            asyncio.create_task(self.distributions.run(), name="informer-distributions"),
        ]
        try:
            await self._until(
                asyncio.gather(self.pods.synced.wait(), self.distributions.synced.wait()), tasks
            )
            self._changed.set()
            while True:
                await self._until(self._changed.wait(), tasks)
                self._changed.clear()
                dists = _values(self.distributions)
                wanted = wanted_models(_values(self.pods), dists, self.node_name)
                if self._gate is not None:
                    wanted = await self._gate.filter(wanted)
                self._sink.set_wanted(wanted, wanted_revisions(dists, self.node_name))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    async def _until(awaitable: Any, tasks: list[asyncio.Task[None]]) -> None:
        """Await ``awaitable``; if an informer task ends first, re-raise its error (or say it stopped)."""
        waiter = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiter.done():
                waiter.cancel()
                await asyncio.gather(waiter, return_exceptions=True)
        for task in tasks:
            if task.done():
                task.result()
                raise RuntimeError(f"{task.get_name()} stopped")
