"""Keeps this Node's model labels and annotations equal to the cache state (writes on change only).

Bursts of state changes are coalesced: a change pokes an event, the loop waits ``debounce``
seconds, computes the desired metadata once and sends the minimal merge patch (nothing when the
diff is empty). The Node's metadata is read at start-up and re-read after a 409 or every
``resync_seconds``; in between the patch response is the current state. Failures are retried
with exponential back-off: ``delay = min(max_delay, base * 2**attempt)``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agent.cluster.labels import NodeMetadata, NodePatch, desired_metadata, metadata_of, node_patch
from agent.lifecycle.manager import ModelManager
from agent.metrics import AgentMetrics
from locality.backoff import backoff_delay
from locality.kube import Conflict, Kube, KubeError
from locality.retry import retry

log = logging.getLogger(__name__)


class NodeSync:
    """Writes the Node's labels and annotations for one agent."""

    def __init__(
        self,
        kube: Kube,
        node_name: str,
        manager: ModelManager,
        metrics: AgentMetrics,
        *,
        debounce: float = 0.2,
        resync_seconds: float = 300.0,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.kube, self.node_name, self.manager, self.metrics = kube, node_name, manager, metrics
        self.debounce, self.resync_seconds = debounce, resync_seconds
        self.base_delay, self.max_delay = base_delay, max_delay
        self._sleep = sleep
        self._dirty = asyncio.Event()
        self._current: NodeMetadata | None = None
        self.writes = 0

    def poke(self) -> None:
        """A model changed state: schedule one sync (many pokes in a burst make one write)."""
        self._dirty.set()

    async def reconcile(self) -> None:
        """Re-read the Node and patch until it matches; retries forever with back-off."""

        async def once() -> None:
            await self._read()
            await self._sync_once()

        def retrying(_: int, exc: KubeError, delay: float) -> None:
            log.warning("node %s sync failed (%s); retrying in %.1fs", self.node_name, exc, delay)
            self._current = None

        await retry(
            once,
            attempts=None,
            delay=lambda n: backoff_delay(n, self.base_delay, self.max_delay),
            errors=KubeError,
            on_retry=retrying,
            sleep=self._sleep,
        )

    async def run(self) -> None:
        """Sync after every burst of changes, and re-read the Node every ``resync_seconds``."""
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), timeout=self.resync_seconds)
                await self._sleep(self.debounce)
            except TimeoutError:
                self._current = None  # periodic re-read: repairs labels someone else removed
            self._dirty.clear()
            await self.reconcile()

    async def _read(self) -> None:
        if self._current is None:
            node = await self._call("get", self.kube.get("nodes", self.node_name))
            self._current = metadata_of(node)

    async def _sync_once(self) -> None:
        assert self._current is not None
        used, quota = await asyncio.to_thread(self.manager.cache.usage)
        self.metrics.set_usage(used, quota)
        desired = desired_metadata(self.manager.model_states(), used, quota)
        patch = node_patch(self._current, desired)
        if patch.empty:
            return
        await self._patch(patch)

    async def _patch(self, patch: NodePatch) -> None:
        try:
            node = await self._call(
                "patch",
                self.kube.patch_node_metadata(
                    self.node_name, labels=patch.labels, annotations=patch.annotations
                ),
            )
        except Conflict:
            self._current = None
            raise
        self.writes += 1
        self._current = metadata_of(node)
        changed = ", ".join(f"{k}={'-' if v is None else v}" for k, v in patch.labels.items())
        log.info("node %s patched%s", self.node_name, f": {changed}" if changed else " (annotations)")

    async def _call(self, op: str, call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        try:
            return await call
        except KubeError:
            self.metrics.kube_api_errors.labels(op=f"node_{op}").inc()
            raise
