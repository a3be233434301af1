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
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent.cluster.labels import NodeMetadata, NodePatch, desired_metadata, metadata_of, node_patch
from agent.lifecycle.manager import ModelManager
from agent.metrics import AgentMetrics
from locality.backoff import backoff_delay
from locality.kube import Conflict, Kube, KubeError
from locality.retry import retry

log = logging.getLogger(__name__)

# Fetch progress (bytes_done) alone rewrites the Node at most this often, and only in 10% steps
# (locality.contract.progress_changed): <= 5,000 / 30 = 167 Node writes/s for 5,000 nodes all
# fetching at once (docs/time-to-ready.md). State changes are written at once, as before.
PROGRESS_INTERVAL_SECONDS = 30.0


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
        progress_interval: float = PROGRESS_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube, self.node_name, self.manager, self.metrics = kube, node_name, manager, metrics
        self.debounce, self.resync_seconds = debounce, resync_seconds
        self.base_delay, self.max_delay = base_delay, max_delay
        self.progress_interval = progress_interval
        self._sleep, self._clock = sleep, clock
        self._dirty = asyncio.Event()
        self._current: NodeMetadata | None = None
        self._progress_at = float("-inf")  # last write that could carry fetch progress
        self._fetching = False  # the last pass saw a fetch in flight
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
        """Sync after every burst of changes, every ``progress_interval`` while a fetch is in
        flight (its progress), and re-read the Node every ``resync_seconds``."""
        resynced = self._clock()
        while True:
            wait = min(self.progress_interval, self.resync_seconds) if self._fetching else self.resync_seconds
            try:
                await asyncio.wait_for(self._dirty.wait(), timeout=wait)
                await self._sleep(self.debounce)
            except TimeoutError:
                if self._clock() - resynced >= self.resync_seconds:
                    resynced = self._clock()
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
        progress = self._clock() - self._progress_at >= self.progress_interval
        states = self.manager.model_states()
        self._fetching = any(m.bytes_done is not None for m in states)
        desired = desired_metadata(
            states,
            used,
            quota,
            written=self._current,
            progress=progress,
            rate=self.manager.fetch_rate.value,
        )
        patch = node_patch(self._current, desired)
        if patch.empty:
            return
        await self._patch(patch)
        if progress:
            self._progress_at = self._clock()

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
