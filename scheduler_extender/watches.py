"""Background work of a connected extender: the Node, ModelDistribution and injected-pod watches,
the reconciler.

Started and stopped with the app (``cleanup_ctx``); a task that dies is logged at once and
restarted after a pause, so the scheduler verbs never lose their node cache silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from locality.informer import Informer
from locality.kube import Kube
from locality.tasks import stop, supervised
from scheduler_extender.config import Settings
from scheduler_extender.metrics import Metrics
from scheduler_extender.nodecache import NodeCache
from scheduler_extender.reconcile import Reconciler
from scheduler_extender.startup import POD_SELECTOR, StartupTracker
from scheduler_extender.workloads import Workloads

log = logging.getLogger(__name__)
RESTART_PAUSE_SECONDS = 1.0


@dataclass
class Watches:
    """The informers and the reconciler of one app."""

    nodes: Informer
    distributions: Informer
    pods: Informer  # only pods the webhook labelled: their time to ready (startup.py)
    reconciler: Reconciler

    @classmethod
    def build(
        cls,
        kube: Kube,
        *,
        cache: NodeCache,
        settings: Settings,
        metrics: Metrics,
        startup: StartupTracker,
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
        pods = Informer(
            kube,
            "pods",
            label_selector=POD_SELECTOR,
            on_event=startup.apply,
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
            workloads=Workloads(kube, ttl=settings.workload_poll_seconds, clock=clock),
            cold_seconds=startup.cold_seconds,
            default_cold_seconds=settings.default_cold_seconds,
        )
        cache.attach(nodes.synced.is_set, lambda: nodes.last_sync)
        return cls(nodes, dists, pods, reconciler)


WATCHES = web.AppKey("watches", Watches)


async def run_watches(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: run the watches and the reconciler for the app's lifetime."""
    watches = app[WATCHES]
    pause = RESTART_PAUSE_SECONDS
    tasks = [
        supervised("node watch", watches.nodes.run, restart_delay=pause, restart_on_return=True),
        supervised(
            "distribution watch", watches.distributions.run, restart_delay=pause, restart_on_return=True
        ),
        supervised("pod watch", watches.pods.run, restart_delay=pause, restart_on_return=True),
        supervised("reconciler", watches.reconciler.run, restart_delay=pause, restart_on_return=True),
    ]
    yield
    await stop(tasks)
