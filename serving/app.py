"""The serving aiohttp app: embeddings, probes and metrics over a model loaded in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from locality import errors
from locality.httpkit import Handler, error_middleware, json_error, metrics_handler, read_json_object
from serving import startup
from serving.batcher import Batcher, QueueFull
from serving.config import Settings
from serving.metrics import Metrics
from serving.openai_errors import openai_error, openai_error_middleware
from serving.policy import FIELDS, Limits, parse_request, render_response
from serving.startup import Embedder, Loaded, StartupError

log = logging.getLogger(__name__)


def _ignore(_: str) -> None:
    return None


@dataclass(frozen=True)
class Deps:
    """The edges: where the model directory comes from, how it is loaded, who hears of a failure."""

    resolve: Callable[[], Awaitable[Path]]
    load: Callable[[Path], Embedder]  # blocking; runs on the inference thread
    prepare: Callable[[], object] | None = None  # blocking warm-up of imports, overlapped with the wait
    on_fatal: Callable[[str], None] = _ignore


@dataclass
class State:
    """What the probes report; written by the start-up task and the CLI's signal handler."""

    loaded: Loaded | None = None
    failure: str | None = None
    draining: bool = False
    in_flight: int = 0  # embedding requests admitted and not yet answered
    idle: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # set while in_flight == 0
    run: startup.RunInThread | None = field(default=None, repr=False)
    batcher: Batcher | None = field(default=None, repr=False)


SETTINGS = web.AppKey("settings", Settings)
DEPS = web.AppKey("deps", Deps)
METRICS = web.AppKey("metrics", Metrics)
STATE = web.AppKey("state", State)


def create_app(settings: Settings, deps: Deps) -> web.Application:
    app = web.Application(
        middlewares=[_count_middleware, error_middleware, openai_error_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[DEPS] = deps
    app[METRICS] = Metrics()
    app[STATE] = State()
    app.cleanup_ctx.append(_engine)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler(app[METRICS].registry))
    return app


async def _engine(app: web.Application) -> AsyncIterator[None]:
    """One inference thread (torch calls never block the loop), the batcher and the start-up task."""
    settings, state, metrics = app[SETTINGS], app[STATE], app[METRICS]
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serving-infer")
    loop = asyncio.get_running_loop()

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await loop.run_in_executor(executor, fn, *args)

    async def run_batch(texts: list[str]) -> tuple[list[list[float]], list[int]]:
        assert state.loaded is not None  # nothing is admitted before start-up finished
        result: tuple[list[list[float]], list[int]] = await run(state.loaded.embedder.embed, texts)
        return result

    state.run = run
    state.batcher = Batcher(
        run_batch,
        metrics,
        max_batch=settings.max_batch,
        max_wait=settings.max_wait,
        max_queue=settings.max_queue,
    )
    tasks = [
        asyncio.create_task(_start_up(app, run), name="serving-startup"),
        asyncio.create_task(state.batcher.run_forever(), name="serving-batcher"),
    ]
    tasks[1].add_done_callback(_log_crash)
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        executor.shutdown(wait=True, cancel_futures=True)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s crashed: %r", task.get_name(), task.exception())


async def _start_up(app: web.Application, run: startup.RunInThread) -> None:
    settings, deps, state, metrics = app[SETTINGS], app[DEPS], app[STATE], app[METRICS]
    try:
        state.loaded = await startup.start(
            deps.resolve,
            deps.load,
            run,
            metrics,
            max_batch=settings.max_batch,
            verify=settings.verify,
            prepare=deps.prepare,
        )
    except asyncio.CancelledError:
        raise
    except StartupError as exc:
        state.failure = str(exc)
    except Exception as exc:  # a bug or an unforeseen library error: still one clear line
        log.exception("start-up failed")
        state.failure = f"start-up failed: {type(exc).__name__}: {exc}"
    if state.failure is not None:
        log.error("start-up failed: %s", state.failure)
        deps.on_fatal(state.failure)
        return
    metrics.ready.set(1)
    metrics.healthy.set(1)


@web.middleware
async def _count_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count embedding answers by status (outside the error middleware, so errors count too)."""
    response = await handler(request)
    if request.path == "/v1/embeddings":
        request.app[METRICS].requests.labels(code=str(response.status)).inc()
    return response


async def embeddings(request: web.Request) -> web.Response:
    settings, state, metrics = request.app[SETTINGS], request.app[STATE], request.app[METRICS]
    if state.loaded is None or state.batcher is None or state.draining:
        raise errors.Unavailable("shutting down" if state.draining else "model is not ready yet")
    body = await read_json_object(request, optional=FIELDS, max_bytes=settings.max_body_bytes)
    limits = Limits(
        settings.model_name,
        state.loaded.embedder.dimension,
        settings.max_inputs,
        settings.max_chars,
        settings.model_aliases,
    )
    parsed = parse_request(body, limits)
    try:
        futures = state.batcher.submit(parsed.texts)
    except QueueFull as exc:
        return openai_error(429, str(exc), headers={"Retry-After": str(exc.retry_after)})
    start = time.perf_counter()
    state.in_flight += 1
    state.idle.clear()
    metrics.in_flight.set(state.in_flight)
    try:
        results = await asyncio.gather(*futures)
    except errors.LocalityError:
        raise
    except Exception as exc:
        raise errors.Internal(f"inference failed: {type(exc).__name__}") from exc
    finally:
        state.in_flight -= 1
        metrics.in_flight.set(state.in_flight)
        if state.in_flight == 0:
            state.idle.set()
    metrics.latency.observe(time.perf_counter() - start)
    metrics.inputs.inc(len(results))
    tokens = sum(count for _, count in results)
    metrics.tokens.inc(tokens)
    vectors = [vector for vector, _ in results]
    model = parsed.model or settings.model_name
    return web.json_response(render_response(vectors, tokens, parsed.encoding, model))


async def models(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    names = (settings.model_name, *settings.model_aliases)
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "model-locality"} for name in names]
    return web.json_response({"object": "list", "data": data})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.failure is not None:
        return json_error(503, f"start-up failed: {state.failure}")
    if state.draining:
        return json_error(503, "shutting down")
    if state.loaded is None:
        return json_error(503, "loading: the model is not loaded and warmed up yet")
    return web.json_response({"status": "ready", "device": state.loaded.embedder.device})


async def healthz(request: web.Request) -> web.Response:
    """Alive while starting; once loaded, a known input must still embed like it did at start-up."""
    state, metrics = request.app[STATE], request.app[METRICS]
    if state.failure is not None:
        return json_error(503, f"start-up failed: {state.failure}")
    if state.loaded is None or state.run is None:
        return web.json_response({"status": "starting"})
    try:
        problem = await startup.probe(state.loaded, state.run)
    except Exception as exc:
        problem = f"health probe raised {type(exc).__name__}: {exc}"
    metrics.healthy.set(0 if problem else 1)
    if problem:
        log.error("unhealthy: %s", problem)
        return json_error(503, problem)
    return web.json_response({"status": "ok"})


async def drain(app: web.Application, grace_seconds: float) -> None:
    """Refuse new work, then wait up to ``grace_seconds`` for admitted requests to finish."""
    app[STATE].draining = True
    app[METRICS].ready.set(0)
    if app[STATE].in_flight:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(app[STATE].idle.wait(), grace_seconds)
