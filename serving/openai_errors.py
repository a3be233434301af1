"""OpenAI's error shape on the OpenAI-compatible routes (``/v1/...``).

``{"error": {"message", "type", "param", "code"}}`` is what the official clients read: with it,
``openai.BadRequestError`` carries our message instead of a bare ``Error code: 400``. Probes and
metrics keep our own ``{"error": "..."}``.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from locality import errors
from locality.httpkit import make_error_middleware

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


def _render(status: int, message: str, headers: Mapping[str, str], exc: BaseException) -> web.Response:
    ours = isinstance(exc, errors.LocalityError)  # only our errors may carry a param/code to show
    param = getattr(exc, "param", None) if ours else None
    code = getattr(exc, "code", None) if ours else None
    return openai_error(status, message, param=param, code=code, headers=headers or None)


# Errors on ``/v1/`` routes in OpenAI's shape; other routes pass through to our own error middleware.
openai_error_middleware = make_error_middleware(
    _render, applies=lambda request: request.path.startswith(OPENAI_PREFIX)
)
