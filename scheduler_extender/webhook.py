"""The mutating admission webhook: ``POST /mutate`` answers AdmissionReview v1 for pod CREATE.

It never denies: a pod is answered ``allowed`` with the injection's JSON Patch, or, when it could
not be mutated (bad annotation, internal error), ``allowed`` without a patch plus ``warnings``
(shown by kubectl) and a best-effort Warning Event in the pod's namespace, so the pod still starts
(without locality). A pod created by a controller has no name yet at admission, only
``generateName``: the Event then names that prefix. Dry-run requests get no Event (``sideEffects:
None``). It runs in the extender's process on its own HTTPS listener (``serve_webhook``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from locality import errors
from locality.backoff import backoff_delay
from locality.contract import mapping
from locality.httpkit import error_middleware, read_body
from locality.jsonbody import decode_json
from locality.retry import retry
from locality.settings import ConfigError
from locality.tasks import stop, supervised
from locality.timestamps import rfc3339
from scheduler_extender.certstore import CertKeeper, server_context
from scheduler_extender.injection import Install, inject
from scheduler_extender.webhook_config import WebhookSettings

if TYPE_CHECKING:
    from locality.kube import Kube

log = logging.getLogger(__name__)
CERT_RETRY = (1.0, 30.0)  # first certificate: back-off base and cap, seconds (was a fixed 5 s)

MAX_REVIEW_BYTES = 8 * 2**20  # a pod is at most ~1.5 MiB in etcd; the review carries it once or twice
MAX_WARNING = 256  # the API server may truncate longer warnings
EVENT_REASON = "ModelLocalityNotInjected"

PostEvent = Callable[[str, dict[str, Any]], Awaitable[object]]
# How one review ended: patched, nothing to do (no annotation, not a pod CREATE, already
# injected), or not mutated though asked (bad annotation, bad review, internal error).
RESULTS = ("mutated", "skipped", "failed")


def _ignore(_result: str) -> None:
    pass


@dataclass
class WebhookContext:
    """What the handler needs: install settings, model sizes (model id -> bytes), an Event poster."""

    install: Install
    sizes: Callable[[], Mapping[str, int]] = dict
    post_event: PostEvent | None = None
    wall: Callable[[], float] = time.time
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    on_result: Callable[[str], None] = _ignore  # one of RESULTS per review (the metrics counter)


CONTEXT = web.AppKey("webhook", WebhookContext)


def review_response(review: object, install: Install, sizes: Mapping[str, int]) -> tuple[dict[str, Any], str]:
    """The AdmissionReview to answer and the reason it was not mutated ("" when it was, or when
    there was nothing to do). Raises ``Invalid`` when ``review`` is not an AdmissionReview."""
    if not isinstance(review, dict) or not isinstance(review.get("request"), dict):
        raise errors.Invalid("body must be an AdmissionReview with a request")
    request = review["request"]
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise errors.Invalid("AdmissionReview request has no uid")
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    answer = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
    kind = mapping(request.get("kind"))
    if (
        request.get("operation") != "CREATE"
        or kind.get("kind") != "Pod"
        or kind.get("group") not in ("", None)
    ):
        return answer, ""
    try:
        outcome = inject(mapping(request.get("object")), install, sizes)
    except Exception:
        log.exception("injection failed for a pod in %s", request.get("namespace"))
        outcome = None
    if outcome is None:
        reason = "model-locality: not injected: internal error in the webhook (see its log)"
        response["warnings"] = [reason]
        return answer, reason
    if outcome.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(list(outcome.patch)).encode()).decode()
    if outcome.warnings:
        response["warnings"] = [w[:MAX_WARNING] for w in outcome.warnings]
    return answer, "" if outcome.patch else "; ".join(outcome.warnings)


def warning_event(request: Mapping[str, Any], reason: str, now: float) -> tuple[str, dict[str, Any]] | None:
    """(namespace, core/v1 Event) about a pod that was not mutated, or None without a namespace."""
    namespace = request.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        return None
    meta = mapping(mapping(request.get("object")).get("metadata"))
    name = meta.get("name") or meta.get("generateName") or "pod"
    stamp = rfc3339(now)
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": "model-locality-webhook-", "namespace": namespace},
        "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": namespace, "name": name},
        "type": "Warning",
        "reason": EVENT_REASON,
        "message": reason[:1024],
        "source": {"component": "model-locality-webhook"},
        "reportingComponent": "model-locality-webhook",
        "reportingInstance": "model-locality-extender",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    return namespace, event


async def mutate(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    try:
        review = decode_json(await read_body(request, MAX_REVIEW_BYTES))
        answer, reason = review_response(review, ctx.install, ctx.sizes())
    except Exception:
        ctx.on_result("failed")
        raise
    ctx.on_result("failed" if reason else "mutated" if "patch" in answer["response"] else "skipped")
    if reason:
        admission = review["request"]
        log.warning("pod in %s not mutated: %s", admission.get("namespace"), reason)
        if ctx.post_event is not None and not admission.get("dryRun"):
            event = warning_event(admission, reason, ctx.wall())
            if event is not None:
                _spawn(ctx, ctx.post_event(*event))
    return web.json_response(answer)


def _spawn(ctx: WebhookContext, call: Awaitable[object]) -> None:
    async def best_effort() -> None:
        try:
            await call
        except Exception as exc:  # an Event is diagnostics: never fail or slow admission for it
            log.warning("could not post the Warning event: %s", exc)

    task = asyncio.ensure_future(best_effort())
    ctx.tasks.add(task)
    task.add_done_callback(ctx.tasks.discard)


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _drain(app: web.Application) -> AsyncIterator[None]:
    yield
    await stop(app[CONTEXT].tasks)


def create_webhook_app(ctx: WebhookContext) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_REVIEW_BYTES)
    app[CONTEXT] = ctx
    app.router.add_post("/mutate", mutate, name="mutate")
    app.router.add_get("/healthz", healthz, name="webhook-healthz")
    app.cleanup_ctx.append(_drain)
    return app


@contextlib.asynccontextmanager
async def serve_webhook(
    ctx: WebhookContext, host: str, port: int, context: ssl.SSLContext
) -> AsyncIterator[web.AppRunner]:
    """Run the webhook app on ``host:port`` over TLS (``context`` may get new certificates while
    it serves) until the block ends."""
    runner = web.AppRunner(create_webhook_app(ctx), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=context).start()
        yield runner
    finally:
        await runner.cleanup()


def webhook_runner(
    ws: WebhookSettings,
    kube: Kube | None,
    sizes: Callable[[], Mapping[str, int]],
    *,
    host: str = "0.0.0.0",
    wall: Callable[[], float] = time.time,
    on_result: Callable[[str], None] = _ignore,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry of the extender app that runs the webhook listener beside it."""
    if kube is None and ws.cert_dir is None:
        raise ConfigError("the webhook needs the Kubernetes API for its certificate, or --webhook-cert-dir")
    keeper = CertKeeper(
        server_context(),
        ws.hosts,
        kube,
        namespace=ws.namespace,
        secret_name=ws.secret,
        webhook_name=ws.configuration,
        cert_dir=Path(ws.cert_dir) if ws.cert_dir else None,
        wall=wall,
    )
    ctx = WebhookContext(
        ws.install, sizes, kube.create_event if kube is not None else None, wall, on_result=on_result
    )

    async def run(_: web.Application) -> AsyncIterator[None]:
        # Supervised: a listener that dies (port taken, TLS trouble) is restarted, not left down
        # while the extender reports ready and pods are admitted without locality.
        task = supervised("admission webhook", lambda: _serve(keeper, ctx, host, ws.port))
        yield
        await stop([task])

    return run


async def _serve(keeper: CertKeeper, ctx: WebhookContext, host: str, port: int) -> None:
    """First certificate (retried: no listener without one), then listen and keep it current."""
    try:
        wait = await retry(
            keeper.sync,
            attempts=None,
            delay=lambda n: backoff_delay(n, *CERT_RETRY, random.random()),
            errors=Exception,
            on_retry=lambda _, exc, delay: log.warning(
                "webhook certificate not available yet (retrying in %.1fs): %s", delay, exc
            ),
        )
        async with serve_webhook(ctx, host, port, keeper.context):
            log.info(
                "admission webhook listening on https://%s:%d/mutate (%s mode)", host, port, ctx.install.mode
            )
            await keeper.run(wait)
    except Exception:
        log.error("the admission webhook stopped; pods are admitted without locality until it is back")
        raise
