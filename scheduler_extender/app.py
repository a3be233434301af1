"""The extender's aiohttp application: scheduler verbs, distribution REST, probes and metrics.

Standalone (no Kubernetes API): full-Nodes requests are answered normally; names-only requests
see an empty node cache (every node scores 0, ``preferred`` pods pass, ``required`` ones fail
with a reason) and a warning is logged; the distribution REST answers 503. ``/readyz`` is ready
at once in standalone mode, and after the first complete Node listing otherwise.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from locality.auth import Authenticator, StaticToken
from locality.authmw import NoAuthenticator
from locality.httpkit import error_middleware, metrics_handler
from scheduler_extender import distributions
from scheduler_extender.config import Settings
from scheduler_extender.fastpath import FastSite, Verbs
from scheduler_extender.metrics import Metrics
from scheduler_extender.nodecache import NodeCache, ProblemLog
from scheduler_extender.startup import StartupTracker
from scheduler_extender.verbs import CONTEXT, VerbContext, filter_handler, prioritize_handler
from scheduler_extender.watches import WATCHES, Watches, run_watches

if TYPE_CHECKING:
    from locality.kube import Kube


def _random_suffix() -> str:
    return secrets.token_hex(4)


@dataclass
class Deps:
    """Outside things the app uses; tests pass their own."""

    kube: Kube | None = None  # None: standalone (no cluster)
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    new_suffix: Callable[[], str] = _random_suffix
    metrics: Metrics = field(default_factory=Metrics)
    node_cache: NodeCache | None = None  # None: a fresh one (fed by the Node watch when kube is set)
    # None: the static token of settings.token if any, else the distribution REST refuses every call.
    authenticator: Authenticator | None = None


SETTINGS = web.AppKey("settings", Settings)
CACHE = web.AppKey("node_cache", NodeCache)
METRICS = web.AppKey("metrics", Metrics)


def create_app(settings: Settings, deps: Deps | None = None) -> web.Application:
    """Build the extender app; the watches and the reconciler run with it (``cleanup_ctx``)."""
    deps = deps or Deps()
    metrics = deps.metrics
    cache = deps.node_cache if deps.node_cache is not None else NodeCache(clock=deps.clock)
    cache.problems = ProblemLog(on_problem=metrics.bad_annotations.labels("node").inc)
    metrics.track_node_cache(lambda: len(cache), cache.age, lambda: cache.synced)
    app = web.Application(
        middlewares=[metrics.middleware(), error_middleware], client_max_size=settings.max_body_bytes
    )
    app[SETTINGS] = settings
    app[CACHE] = cache
    app[METRICS] = metrics
    app[CONTEXT] = VerbContext(
        cache=cache,
        max_body_bytes=settings.max_body_bytes,
        standalone=deps.kube is None and deps.node_cache is None,
        pod_problems=ProblemLog(on_problem=metrics.bad_annotations.labels("pod").inc),
        clock=deps.clock,
        observe_nodes=lambda verb, n: metrics.nodes_offered.labels(verb).observe(n),
    )
    startup = StartupTracker(
        cache.index.get, metrics, wall=deps.wall, timeout=settings.startup_timeout_seconds
    )
    poke: Callable[[], None] = lambda: None  # noqa: E731
    if deps.kube is None:
        if deps.node_cache is None:
            cache.mark_synced()  # nothing will ever arrive: ready at once
    else:
        watches = Watches.build(
            deps.kube,
            cache=cache,
            settings=settings,
            metrics=metrics,
            startup=startup,
            clock=deps.clock,
            wall=deps.wall,
        )
        app[WATCHES] = watches
        app.cleanup_ctx.append(run_watches)
        poke = watches.reconciler.trigger.set
    if settings.webhook is not None:  # its own HTTPS listener, beside this app (webhook.py)
        from scheduler_extender.webhook import webhook_runner

        sizes = lambda: cache.index.sizes  # noqa: E731
        counted = lambda result: metrics.webhook_requests.labels(result).inc()  # noqa: E731
        runner = webhook_runner(settings.webhook, deps.kube, sizes, host=settings.host, on_result=counted)
        app.cleanup_ctx.append(runner)
    prefix = settings.url_prefix
    app.router.add_post(f"{prefix}/filter", filter_handler, name="filter")
    app.router.add_post(f"{prefix}/prioritize", prioritize_handler, name="prioritize")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/metrics", metrics_handler(metrics.registry), name="metrics")
    ctx = distributions.DistContext(deps.kube, cache, deps.new_suffix, poke, startup)
    static = StaticToken(settings.token) if settings.token else None
    authenticator = deps.authenticator or static or NoAuthenticator()
    app.add_subapp("/v1/", distributions.create_subapp(authenticator, ctx))
    return app


def fast_site(app: web.Application) -> Callable[[web.BaseRunner, Any], web.BaseSite]:
    """The listener for ``serve``: the scheduler verbs on ``fastpath.VerbProtocol``, the rest aiohttp."""
    verbs = Verbs(app[SETTINGS].url_prefix, app[CONTEXT], app[METRICS])
    return lambda runner, sock: FastSite(runner, sock, verbs)


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    cache = request.app[CACHE]
    if not cache.synced:
        return web.json_response({"error": "node cache not synced yet"}, status=503)
    return web.json_response({"status": "ready", "nodes": len(cache)})
