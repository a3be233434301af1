"""The agent's aiohttp app: REST API, probes, metrics, and the background tasks of a node agent.

Start-up order (in ``cleanup_ctx``): scan the cache -> reconcile the Node's labels -> ``/readyz``
answers 200 -> start the watchers. Without a Kubernetes API (standalone) the agent is ready right
after the scan. GETs are open: they are read-only, node-local and show URIs redacted. POST needs
``create modelrequests`` in the caller's namespace (and a ModelAccessPolicy allowing the URI there),
DELETE ``delete modelrequests`` cluster-wide (``locality.auth``); a static token may do both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent.config import Settings
from agent.face.requests import REVISION_FIELDS, revision_fields
from agent.face.socket import SOCKET_NAME, bind_socket
from agent.fetch.cache import Cache
from agent.lifecycle.manager import ModelManager
from agent.lifecycle.views import public
from agent.metrics import AgentMetrics
from agent.peers.metrics import PeerMetrics
from agent.store.lock import Busy, Owner, hold
from locality import errors
from locality.auth import Authenticator, Rule, StaticToken, rules_table
from locality.authmw import NoAuthenticator, auth_middleware, principal_of
from locality.httpkit import error_middleware, metrics_handler, read_json_object
from locality.identity import InvalidURI, model_ref
from locality.settings import ConfigError
from locality.tasks import stop, supervised

if TYPE_CHECKING:
    from agent.cluster.access import AccessGate

log = logging.getLogger(__name__)

MANAGER = web.AppKey("manager", ModelManager)
METRICS = web.AppKey("metrics", AgentMetrics)


@dataclass
class Deps:
    """Outside systems the app uses; tests pass a fake-API ``kube`` and may swap the cache."""

    kube: Any = None  # locality.kube.Kube, or None: standalone
    cache_factory: Callable[..., Cache] = Cache
    resync_seconds: float = 300.0
    # None: the static token of settings.token if any, else every protected call is refused.
    authenticator: Authenticator | None = None
    access: Any = None  # agent.cluster.access.AccessGate (in a cluster), or None: no ModelAccessPolicy
    restart_delay: float = 5.0  # seconds before the supervisor restarts a crashed background task
    peers: Any = None  # agent.peers.wiring.Peers (fetch chunks from other agents), or None: origins only


# The RBAC check of each protected route (locality.auth.Rule); a protected route missing here is refused.
RULES = rules_table(
    [
        ("POST", "models-create", Rule("create", "modelrequests", scope="caller")),
        ("DELETE", "models-delete", Rule("delete", "modelrequests", scope="cluster", name_from="id")),
    ]
)
ACCESS: web.AppKey[AccessGate] = web.AppKey("access")


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
    body = await read_json_object(request, required=("uri",), optional=REVISION_FIELDS, max_bytes=16 << 10)
    if not isinstance(body["uri"], str):
        raise errors.Invalid("uri must be a string")
    try:
        ref = model_ref(body["uri"])
    except InvalidURI as exc:
        raise errors.Invalid(str(exc)) from exc
    refresh, revision = revision_fields(body)
    who, gate = principal_of(request), request.app.get(ACCESS)
    if gate is not None and who is not None and who.namespace is not None:
        await gate.check(who.namespace, ref)  # before any byte is fetched
    answer = await request.app[MANAGER].request(ref, refresh=refresh, revision=revision)
    with contextlib.suppress(errors.NotFound):  # the same object GET /v1/models/{id} answers
        answer = {**request.app[MANAGER].view(ref.id), **answer}
    return web.json_response(public(answer), status=202)


# Adds where a model's last fetch got its bytes (origin_bytes, peer_bytes, peers) when the agent
# has peers (agent.peers.wiring.Peers.annotate); else views pass unchanged.
SOURCES: web.AppKey[Callable[[dict[str, Any]], dict[str, Any]]] = web.AppKey("sources")


def _sourced(request: web.Request, view: dict[str, Any]) -> dict[str, Any]:
    annotate = request.app.get(SOURCES)
    return public(annotate(view) if annotate is not None else view)


async def list_models(request: web.Request) -> web.Response:
    # A bare list, the same as `model-agent ls --json`.
    return web.json_response([_sourced(request, v) for v in request.app[MANAGER].views()])


async def get_model(request: web.Request) -> web.Response:
    return web.json_response(_sourced(request, request.app[MANAGER].view(request.match_info["id"])))


async def delete_model(request: web.Request) -> web.Response:
    view = await request.app[MANAGER].delete(request.match_info["id"])
    return web.json_response(public(view), status=202)


async def delete_model_local(request: web.Request) -> web.Response:
    """DELETE on the local socket: ``?force=1`` removes a pinned model too (``model-agent rm --force``)."""
    force = request.query.get("force") in ("1", "true")
    view = await request.app[MANAGER].delete(request.match_info["id"], force=force)
    return web.json_response(view, status=202)


async def verify_model(request: web.Request) -> web.Response:
    """Local socket only: re-hash a model (``model-agent verify``); ``?repair=1`` re-fetches it."""
    repair = request.query.get("repair") in ("1", "true")
    return web.json_response(await request.app[MANAGER].verify(request.match_info["id"], repair=repair))


async def post_gc(request: web.Request) -> web.Response:
    """Local socket only: evict down to the watermarks now (``model-agent gc``)."""
    return web.json_response(await request.app[MANAGER].gc())


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
    static = StaticToken(settings.token) if settings.token else None
    authenticator = deps.authenticator or static or NoAuthenticator()
    metrics = AgentMetrics()
    app = web.Application(
        middlewares=[
            metrics.middleware(),
            error_middleware,
            auth_middleware(authenticator, RULES, {"POST", "DELETE", "PUT", "PATCH"}),
        ],
        client_max_size=64 << 10,
    )
    app[METRICS] = metrics
    cache_factory = deps.cache_factory
    # The peer counters are always exported (zero with peers off), so dashboards and alerts that
    # name them read 0 rather than "no data".
    peer_metrics = deps.peers.net.metrics if deps.peers is not None else PeerMetrics()
    for counter in peer_metrics.collectors():
        metrics.registry.register(counter)
    if deps.peers is not None:
        cache_factory = deps.peers.cache_factory()
    app[MANAGER] = ModelManager(settings, metrics, cache_factory=cache_factory)
    app[STATE] = AgentState(standalone=deps.kube is None or not settings.node_name)
    if deps.access is not None:
        app[ACCESS] = deps.access
    app.router.add_post("/v1/models", post_model, name="models-create")
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{id}", get_model)
    app.router.add_delete("/v1/models/{id}", delete_model, name="models-delete")
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler(metrics.registry))
    app.cleanup_ctx.append(_lifecycle(settings, deps))
    if deps.peers is not None:
        manager = app[MANAGER]
        deps.peers.follow(
            lambda: [(m.id, m.revision) for m in manager.model_states() if m.state == "ready"],
            manager.subscribe,
        )
        app.cleanup_ctx.append(lambda _: deps.peers.serve())
        app[SOURCES] = deps.peers.annotate
    return app


def _local_app(app: web.Application) -> web.Application:
    """The same API for the CLI on ``<cache>/agent.sock`` (mode 0600, so no token), plus the
    verbs only an operator on the node runs: verify, gc, and rm --force."""
    local = web.Application(middlewares=[error_middleware], client_max_size=64 << 10)
    local[MANAGER], local[STATE], local[METRICS] = app[MANAGER], app[STATE], app[METRICS]
    if SOURCES in app:
        local[SOURCES] = app[SOURCES]
    local.router.add_post("/v1/models", post_model)
    local.router.add_get("/v1/models", list_models)
    local.router.add_get("/v1/models/{id}", get_model)
    local.router.add_delete("/v1/models/{id}", delete_model_local)
    local.router.add_get("/v1/models/{id}/verify", verify_model)
    local.router.add_post("/v1/gc", post_gc)
    return local


async def _own(settings: Settings) -> Owner:
    """The exclusive lock on the cache root, for the daemon's lifetime (waits for a previous one)."""
    try:
        return await asyncio.to_thread(
            hold, settings.cache_dir, exclusive=True, wait=settings.grace_seconds + 5
        )
    except Busy as exc:
        raise ConfigError(f"{exc} (another agent, or a model-agent command); not starting") from exc


async def _serve_local(app: web.Application, root: Path) -> web.AppRunner:
    runner = web.AppRunner(_local_app(app), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        sock = await asyncio.to_thread(bind_socket, root)
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def _stop_local(runner: web.AppRunner, root: Path) -> None:
    await runner.cleanup()
    with contextlib.suppress(OSError):
        (root / SOCKET_NAME).unlink()


def _lifecycle(settings: Settings, deps: Deps) -> Callable[[web.Application], AsyncIterator[None]]:
    """Own the cache root, scan it, serve the local socket, run the background tasks; undo in
    reverse order on shutdown (the lock goes last: fetches checkpoint while we still own it)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        manager, state, metrics = app[MANAGER], app[STATE], app[METRICS]
        root = Path(settings.cache_dir)
        owner = await _own(settings)
        try:
            await manager.start()
            state.scanned = True
            local = await _serve_local(app, root)
            try:
                tasks = _start_tasks(settings, deps, manager, state, metrics)
                try:
                    yield
                finally:
                    await stop(tasks)
                    await manager.close(settings.grace_seconds / 2)
                    if state.nodesync is not None:
                        await _final_sync(state.nodesync, min(5.0, settings.grace_seconds / 4))
            finally:
                await _stop_local(local, root)
        finally:
            owner.release()

    return ctx


def _start_tasks(
    settings: Settings, deps: Deps, manager: ModelManager, state: AgentState, metrics: AgentMetrics
) -> list[asyncio.Task[None]]:
    delay = deps.restart_delay
    tasks = [supervised("model-manager", manager.run, restart_delay=delay)]
    if settings.refresh_seconds > 0:
        seconds = settings.refresh_seconds
        tasks.append(supervised("refresh", lambda: manager.refresher.run(seconds), restart_delay=delay))
    if state.standalone:
        log.info("standalone mode: no Kubernetes API or no node name; node labels are not written")
        _mark_ready(state, metrics)
        return tasks
    from agent.cluster.nodesync import NodeSync

    assert settings.node_name is not None
    state.nodesync = NodeSync(
        deps.kube, settings.node_name, manager, metrics, resync_seconds=deps.resync_seconds
    )
    manager.subscribe(state.nodesync.poke)
    cluster = supervised(
        "cluster", lambda: _cluster(settings, deps, manager, state, metrics), restart_delay=delay
    )
    tasks.append(cluster)
    return tasks


def _mark_ready(state: AgentState, metrics: AgentMetrics) -> None:
    state.reconciled = True
    metrics.ready.set(1)


async def _cluster(
    settings: Settings, deps: Deps, manager: ModelManager, state: AgentState, metrics: AgentMetrics
) -> None:
    """Reconcile the Node, become ready, then keep the Node in sync and watch pods and distributions."""
    from agent.cluster.watchers import Watchers

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
        gate=deps.access,
    )
    state.watchers = watchers
    runs = [sync.run(), watchers.run()] + ([deps.access.run()] if deps.access is not None else [])
    # One task group: when one run fails the others are cancelled with it and the supervisor
    # restarts the set (with gather, the survivors ran on beside their restarted copies).
    async with asyncio.TaskGroup() as group:
        for run in runs:
            group.create_task(run)


async def _final_sync(sync: Any, seconds: float) -> None:
    """On shutdown, publish the last states (e.g. fetching -> failed) if the API answers quickly."""
    try:
        async with asyncio.timeout(seconds):
            await sync.reconcile()
    except Exception as exc:
        log.info("final node sync skipped: %s", exc or type(exc).__name__)
