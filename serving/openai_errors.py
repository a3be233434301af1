"""OpenAI's error shape on the OpenAI-compatible routes (``/v1/...``).

``{"error": {"message", "type", "param", "code"}}`` is what the official clients read: with it,
``openai.BadRequestError`` carries our message instead of a bare ``Error code: 400``. Probes and
metrics keep our own ``{"error": "..."}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiohttp import web

from locality import errors
from locality.httpkit import Handler, status_of

log = logging.getLogger(__name__)

OPENAI_PREFIX = "/v1/"
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    """OpenAI's ``type`` for a status: ``invalid_request_error``, ``not_found_error``, ... and
    ``server_error`` for every 5xx."""
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def openai_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer errors on ``/v1/`` routes in OpenAI's shape; other routes pass through untouched."""
    if not request.path.startswith(OPENAI_PREFIX):
        return await handler(request)
    try:
        return await handler(request)
    except errors.LocalityError as exc:
        return openai_error(
            status_of(exc), exc.message, param=getattr(exc, "param", None), code=getattr(exc, "code", None)
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        allow = exc.headers.get("Allow")
        return openai_error(exc.status, reason or "error", headers={"Allow": allow} if allow else None)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return openai_error(500, "internal error; see the server log")
