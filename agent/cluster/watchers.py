"""The watches of this node: pods bound here and ModelDistributions that target it.

``Watchers`` runs one informer per kind and hands every change of what the node wants
(``agent.cluster.wanted``, the pure core) to the model manager.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from agent.cluster.wanted import pod_model_refs, wanted_models, wanted_revisions
from agent.lifecycle.modelstate import Wanted
from locality.informer import Informer
from locality.kube import Kube

log = logging.getLogger(__name__)

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
