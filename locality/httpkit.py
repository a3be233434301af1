"""Shared aiohttp plumbing for our services: JSON errors, timing, body parsing, metrics.

Authentication is ``locality.authmw`` (bearer tokens checked by a ``locality.auth`` authenticator).

Both the agent and the extender build their apps from these pieces so that every error body is
``{"error": "..."}`` and no traceback ever reaches a client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from locality import errors
from locality.jsonbody import decode_json

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


STATUS_OF: dict[type[errors.LocalityError], int] = {
    errors.Invalid: 400,
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.TooLarge: 413,
    errors.Unavailable: 503,
    errors.InsufficientStorage: 507,
    errors.Internal: 500,
}


def status_of(exc: errors.LocalityError) -> int:
    """The HTTP status of a domain error: the first class in its MRO that has one (else 500)."""
    for cls in type(exc).__mro__:
        status = STATUS_OF.get(cls)
        if status is not None:
            return status
    return 500


def timing_middleware(record: Callable[[web.Request, int, float], None]) -> Any:
    """Call ``record(request, status, seconds)`` once per request, whatever the outcome.

    Place it outside the error middleware so that it sees the status the client got.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            record(request, status, time.perf_counter() - start)

    return middleware


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


# What an error becomes on the wire: status, a message safe for the client, headers, the error itself.
Render = Callable[[int, str, Mapping[str, str], BaseException], web.StreamResponse]


def make_error_middleware(render: Render, *, applies: Callable[[web.Request], bool] | None = None) -> Any:
    """A middleware turning domain and HTTP errors into ``render(...)``; anything unexpected is logged
    and rendered as a 500, never a traceback. ``applies``: the requests it handles (default: all)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if applies is not None and not applies(request):
            return await handler(request)
        try:
            return await handler(request)
        except errors.LocalityError as exc:
            return render(status_of(exc), exc.message, _auth_header(exc), exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
            return render(exc.status, reason or "error", _allow_header(exc), exc)
        except Exception as exc:
            if isinstance(exc, ConnectionError) and client_gone(request):
                # The client hung up mid-answer (a timeout or a cancel on its side): nothing of ours
                # failed, and a traceback per hang-up costs a busy server more than the answer did.
                log.debug("client went away during %s %s: %s", request.method, request.path, exc)
                return web.Response(status=CLIENT_CLOSED)  # never sent; the request metrics count it
            log.exception("unhandled error on %s %s", request.method, request.path)
            return render(500, "internal error; see the server log", {}, exc)

    return middleware


CLIENT_CLOSED = 499  # nginx's "client closed request": counted, never sent


def client_gone(request: web.BaseRequest) -> bool:
    """The request's connection is closed or closing: whatever it is answered will not arrive."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _render_json(status: int, message: str, headers: Mapping[str, str], _: BaseException) -> web.Response:
    return json_error(status, message, headers=headers)


# ``{"error": "..."}`` with the domain error's status: the shape of every route of ours.
error_middleware = make_error_middleware(_render_json)


def _auth_header(exc: errors.LocalityError) -> dict[str, str]:
    return {"WWW-Authenticate": "Bearer"} if isinstance(exc, errors.Unauthenticated) else {}


def _allow_header(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``max_bytes``.

    Reads until EOF: one ``content.read(n)`` may return only the first network chunk.
    """
    if request.content_length is not None and request.content_length > max_bytes:
        raise errors.TooLarge(f"request body over {max_bytes} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
        if total > max_bytes:
            raise errors.TooLarge(f"request body over {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_object(
    request: web.Request,
    *,
    required: Collection[str] = (),
    optional: Collection[str] = (),
    max_bytes: int = 1 << 20,
) -> dict[str, Any]:
    """Parse a JSON object body; 400 on bad JSON, a non-object, unknown or missing fields."""
    body = decode_json(await read_body(request, max_bytes))
    if not isinstance(body, dict):
        raise errors.Invalid("body must be a JSON object")
    allowed = set(required) | set(optional)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise errors.Invalid(f"unknown field(s): {', '.join(unknown)}")
    missing = sorted(set(required) - set(body))
    if missing:
        raise errors.Invalid(f"missing field(s): {', '.join(missing)}")
    return body


def metrics_handler(registry: CollectorRegistry) -> Handler:
    """A handler that renders ``registry`` in the Prometheus text format."""

    async def handle(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        resp = web.Response(body=body)
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        resp.charset = "utf-8"
        return resp

    return handle


class QuietProbeAccessLogger(AbstractAccessLogger):
    """Access log that skips the probe and metrics endpoints (they are polled every few seconds)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request.path in PROBE_PATHS:
            return
        self.logger.info(
            "%s %s %s %d %.1fms",
            request.remote,
            request.method,
            request.path_qs,
            response.status,
            time * 1000,
        )
