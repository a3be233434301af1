"""Shared aiohttp plumbing for our services: JSON errors, bearer auth, body parsing, metrics.

Both the agent and the extender build their apps from these pieces so that every error body is
``{"error": "..."}`` and no traceback ever reaches a client.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
PLACEHOLDER_TOKEN_PREFIX = "CHANGE-ME"


class ApiError(Exception):
    """A domain error that maps to an HTTP status and a JSON ``{"error": message}`` body."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class NotFoundError(ApiError):
    status = 404


class ConflictError(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


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


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn domain and HTTP errors into JSON; log and answer 500 JSON for anything unexpected."""
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        return json_error(exc.status, reason or "error", headers=_allow_header(exc))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal error; see the server log")


def _allow_header(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def bearer_auth_middleware(token: str | None, protected_methods: Collection[str]) -> Any:
    """Require ``Authorization: Bearer <token>`` on the given methods (constant-time compare).

    With ``token=None`` auth is disabled (standalone development only; the CLI warns).
    """
    expected = token.encode() if token else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is not None and request.method in protected_methods:
            header = request.headers.get("Authorization", "")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
                return json_error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return middleware


def read_token_file(path: str | Path | None) -> str | None:
    """Read a bearer token from a file (a mounted Secret); ``None`` when no file is configured."""
    if not path:
        return None
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    if token.startswith(PLACEHOLDER_TOKEN_PREFIX):
        # Fail closed: the manifests' base ships a placeholder so that it renders; serving with it
        # would let anyone who reaches the port start downloads and delete models.
        raise ValueError(
            f"token file {path} holds the placeholder token of the manifests; "
            "replace it (manifests/README.md, section Token)"
        )
    return token


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``max_bytes``.

    Reads until EOF: one ``content.read(n)`` may return only the first network chunk.
    """
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"request body over {max_bytes} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(f"request body over {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_json(raw: bytes) -> Any:
    """Decode JSON or raise ``BadRequest``; deep nesting (``RecursionError``) is bad input too."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"body is not valid JSON: {str(exc)[:200]}") from None


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
        raise BadRequest("body must be a JSON object")
    allowed = set(required) | set(optional)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    missing = sorted(set(required) - set(body))
    if missing:
        raise BadRequest(f"missing field(s): {', '.join(missing)}")
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
