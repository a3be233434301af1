"""The agent's aiohttp app: REST API, probes, metrics, and the background tasks of a node agent.

Start-up order (in ``cleanup_ctx``): scan the cache -> reconcile the Node's labels -> ``/readyz``
answers 200 -> start the watchers. Without a Kubernetes API (standalone) the agent is ready right
after the scan. GETs are open: they are read-only and the port is node-local; POST and DELETE
need the bearer token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agent.cache import Cache
from agent.config import Settings
from agent.manager import ModelManager
from agent.metrics import AgentMetrics
from locality import errors
from locality.httpkit import bearer_auth_middleware, error_middleware, metrics_handler, read_json_object
from locality.identity import InvalidURI, model_ref
from locality.tasks import supervised

log = logging.getLogger(__name__)

MANAGER = web.AppKey("manager", ModelManager)
METRICS = web.AppKey("metrics", AgentMetrics)


@dataclass
class Deps:
    """Outside systems the app uses; tests pass a fake-API ``kube`` and may swap the cache."""

    kube: Any = None  # locality.kube.Kube, or None: standalone
    cache_factory: Callable[..., Cache] = Cache
    resync_seconds: float = 300.0


@dataclass
class AgentState:
    """Start-up progress, read by ``/readyz``."""

    scanned: bool = False
    reconciled: bool = False
    standalone: bool = True
    nodesync: Any = None
    watchers: Any = None


STATE = web.AppKey("state", AgentState)


async def post_model(request: web.Request) -> web.Response:
    body = await read_json_object(request, required=("uri",), max_bytes=16 << 10)
    if not isinstance(body["uri"], str):
        raise errors.Invalid("uri must be a string")
    try:
        ref = model_ref(body["uri"])
    except InvalidURI as exc:
        raise errors.Invalid(str(exc)) from exc
    return web.json_response(await request.app[MANAGER].request(ref), status=202)


async def list_models(request: web.Request) -> web.Response:
    # A bare list, like `model-agent ls --json` (DESIGN.md section 3: "GET /v1/models -> list").
    return web.json_response(request.app[MANAGER].views())


async def get_model(request: web.Request) -> web.Response:
    return web.json_response(request.app[MANAGER].view(request.match_info["id"]))


async def delete_model(request: web.Request) -> web.Response:
    return web.json_response(await request.app[MANAGER].delete(request.match_info["id"]), status=202)


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ready = state.scanned and state.reconciled
    body: dict[str, object] = {
        "ready": ready,
        "scanned": state.scanned,
        "labels_reconciled": state.reconciled,
    }
    body["mode"] = "standalone" if state.standalone else "cluster"
    return web.json_response(body, status=200 if ready else 503)


def create_app(settings: Settings, deps: Deps | None = None) -> web.Application:
    """The agent app; ``deps.kube=None`` runs standalone (no labels, no watchers)."""
    deps = deps or Deps()
    if settings.token is None:
        log.warning("NO TOKEN FILE: POST and DELETE on /v1/models are unauthenticated")
    metrics = AgentMetrics()
    app = web.Application(
        middlewares=[
            metrics.middleware(),
            error_middleware,
            bearer_auth_middleware(settings.token, {"POST", "DELETE", "PUT", "PATCH"}),
        ],
        client_max_size=64 << 10,
    )
    app[METRICS] = metrics
    app[MANAGER] = ModelManager(settings, metrics, cache_factory=deps.cache_factory)
    app[STATE] = AgentState(standalone=deps.kube is None or not settings.node_name)
    app.router.add_post("/v1/models", post_model)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{id}", get_model)
    app.router.add_delete("/v1/models/{id}", delete_model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler(metrics.registry))
    app.cleanup_ctx.append(_lifecycle(settings, deps))
    return app


def _lifecycle(settings: Settings, deps: Deps) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        manager, state, metrics = app[MANAGER], app[STATE], app[METRICS]
        await manager.start()
        state.scanned = True
        tasks = [supervised("model-manager", manager.run)]
        if state.standalone:
            log.info("standalone mode: no Kubernetes API or no node name; node labels are not written")
            _mark_ready(state, metrics)
        else:
            from agent.nodesync import NodeSync

            assert settings.node_name is not None
            state.nodesync = NodeSync(
                deps.kube, settings.node_name, manager, metrics, resync_seconds=deps.resync_seconds
            )
            manager.subscribe(state.nodesync.poke)
            tasks.append(supervised("cluster", lambda: _cluster(settings, deps, manager, state, metrics)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await manager.close(settings.grace_seconds / 2)
            if state.nodesync is not None:
                await _final_sync(state.nodesync, min(5.0, settings.grace_seconds / 4))

    return ctx


def _mark_ready(state: AgentState, metrics: AgentMetrics) -> None:
    state.reconciled = True
    metrics.ready.set(1)


async def _cluster(
    settings: Settings, deps: Deps, manager: ModelManager, state: AgentState, metrics: AgentMetrics
) -> None:
    """Reconcile the Node, become ready, then keep the Node in sync and watch pods and distributions."""
    from agent.watchers import Watchers

    assert settings.node_name is not None
    sync = state.nodesync
    await sync.reconcile()
    _mark_ready(state, metrics)
    log.info("node %s labels reconciled; watching pods and distributions", settings.node_name)
    watchers = Watchers(
        deps.kube,
        settings.node_name,
        manager,
        resync_seconds=deps.resync_seconds,
        on_error=lambda op, err: metrics.kube_api_errors.labels(op=op).inc(),
    )
    state.watchers = watchers
    await asyncio.gather(sync.run(), watchers.run())


async def _final_sync(sync: Any, seconds: float) -> None:
    """On shutdown, publish the last states (e.g. fetching -> failed) if the API answers quickly."""
    try:
        async with asyncio.timeout(seconds):
            await sync.reconcile()
    except Exception as exc:
        log.info("final node sync skipped: %s", exc or type(exc).__name__)
