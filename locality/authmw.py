"""The aiohttp side of ``locality.auth``: a middleware that authenticates and authorizes by route.

Every request whose method is protected needs ``Authorization: Bearer <token>``; the route's
``Rule`` (looked up by method and route name) says which RBAC check it needs. A protected route
without a rule is refused (fail closed). Errors are domain errors (401 ``Unauthenticated``,
403 ``Forbidden``, 503 ``Unavailable``): place this inside the error middleware.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import MatchInfoError

from locality import errors
from locality.auth import Authenticator, Principal, Rule, bearer_of
from locality.httpkit import Handler

PRINCIPAL = web.RequestKey("principal", Principal)


class NoAuthenticator:
    """Stands in when a service was built without one: every protected call is refused."""

    async def authenticate(self, token: str) -> Principal:
        raise errors.Unauthenticated("this server has no authenticator configured; it refuses every call")

    async def authorize(self, who: Principal, action: Any) -> None:
        raise errors.Forbidden("this server has no authenticator configured")


def auth_middleware(
    authenticator: Authenticator, rules: Mapping[tuple[str, str], Rule], protected: Collection[str]
) -> Any:
    """Authenticate ``protected`` methods and check the route's rule; the caller lands in
    ``request[PRINCIPAL]`` for handlers that need it (e.g. the caller's namespace)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in protected or isinstance(request.match_info, MatchInfoError):
            return await handler(request)  # open method, or a 404/405 the router answers
        token = bearer_of(request.headers.get("Authorization", ""))
        if token is None:
            raise errors.Unauthenticated("missing bearer token (Authorization: Bearer <token>)")
        who = await authenticator.authenticate(token)
        rule = rules.get((request.method, request.match_info.route.name or ""))
        if rule is None:
            raise errors.Forbidden(f"no access rule for {request.method} {request.path}")
        await authenticator.authorize(who, rule.action(who, request.match_info))
        request[PRINCIPAL] = who
        return await handler(request)

    return middleware


def principal_of(request: web.Request) -> Principal | None:
    """The authenticated caller of this request (None on open methods)."""
    return request.get(PRINCIPAL)
