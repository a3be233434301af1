"""Background work of a connected extender: the Node and ModelDistribution watches, the reconciler.

Started and stopped with the app (``cleanup_ctx``); a task that dies is logged at once and
restarted after a pause, so the scheduler verbs never lose their node cache silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from locality.informer import Informer
from locality.kube import Kube
from scheduler_extender.config import Settings
from scheduler_extender.metrics import Metrics
from scheduler_extender.nodecache import NodeCache
from scheduler_extender.reconcile import Reconciler

log = logging.getLogger(__name__)
RESTART_PAUSE_SECONDS = 1.0


@dataclass
class Watches:
    """The informers and the reconciler of one app."""

    nodes: Informer
    distributions: Informer
    reconciler: Reconciler

    @classmethod
    def build(
        cls,
        kube: Kube,
        *,
        cache: NodeCache,
        settings: Settings,
        metrics: Metrics,
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> Watches:
        trigger = asyncio.Event()
        cache.on_change = trigger.set
        nodes = Informer(
            kube, "nodes", on_event=cache.apply, resync_seconds=settings.resync_seconds, clock=clock
        )
        dists = Informer(
            kube,
            "modeldistributions",
            on_event=lambda _kind, _obj: trigger.set(),
            resync_seconds=settings.resync_seconds,
            clock=clock,
        )
        reconciler = Reconciler(
            kube,
            cache,
            dists.items,
            trigger=trigger,
            interval=settings.status_interval_seconds,
            clock=clock,
            wall=wall,
            metrics=metrics,
            ready=lambda: nodes.synced.is_set() and dists.synced.is_set(),
        )
        cache.attach(nodes.synced.is_set, lambda: nodes.last_sync)
        return cls(nodes, dists, reconciler)


WATCHES = web.AppKey("watches", Watches)


async def run_watches(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: run the watches and the reconciler for the app's lifetime."""
    watches = app[WATCHES]
    tasks = [
        asyncio.create_task(_supervise("node watch", watches.nodes.run)),
        asyncio.create_task(_supervise("distribution watch", watches.distributions.run)),
        asyncio.create_task(_supervise("reconciler", watches.reconciler.run)),
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _supervise(what: str, run: Callable[[], Awaitable[None]]) -> None:
    while True:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s crashed; restarting in %.0f s", what, RESTART_PAUSE_SECONDS)
        await asyncio.sleep(RESTART_PAUSE_SECONDS)
