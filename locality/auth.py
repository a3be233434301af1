"""Who is calling and may they: ServiceAccount tokens checked by the API server, or a static token.

``KubernetesAuth`` does what kube-rbac-proxy does: a TokenReview bound to the audience
``model-locality`` (a token minted for any other audience is refused), then a
SubjectAccessReview against RBAC on the ``model-locality.io`` group. Both answers are cached
(allow 10 s, deny 2 s, at most 4096 entries each, least recently used out first). The API
server's failure is ``Unavailable`` (503), never an open door. ``StaticToken`` (laptops, the
demo, standalone agents) compares one shared token in constant time and allows everything.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from locality import errors
from locality.kube import KubeError

AUDIENCE = "model-locality"
# Agent-to-agent calls (docs/peers.md): a token for this audience is mounted only into agent pods,
# and the peer endpoint also checks that it names the agents' ServiceAccount.
PEER_AUDIENCE = "model-locality-peer"
API_GROUP = "model-locality.io"
SA_PREFIX = "system:serviceaccount:"
STATIC_USER = "model-locality:static-token"

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller, as the API server (or the static token) vouches for it."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()
    source: str = "kubernetes"  # or "static"

    @property
    def namespace(self) -> str | None:
        """The namespace of a ServiceAccount (``system:serviceaccount:NS:NAME``), else None."""
        return sa_namespace(self.username)


def sa_namespace(username: str) -> str | None:
    """``system:serviceaccount:NS:NAME`` -> ``NS``; anything else (a user, a node) -> None."""
    if not username.startswith(SA_PREFIX):
        return None
    parts = username[len(SA_PREFIX) :].split(":")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0]


@dataclass(frozen=True, slots=True)
class Action:
    """One RBAC check: ``verb`` on ``resource`` of ``model-locality.io``; namespace "" = cluster-wide."""

    verb: str
    resource: str
    namespace: str = ""
    name: str = ""

    def describe(self) -> str:
        what = f"{self.verb} {self.resource}.{API_GROUP}" + (f" {self.name!r}" if self.name else "")
        return f"{what} in namespace {self.namespace!r}" if self.namespace else f"{what} cluster-wide"


class Authenticator(Protocol):
    """Turn a bearer token into a ``Principal`` and decide what it may do."""

    async def authenticate(self, token: str) -> Principal:
        """The caller, or ``Unauthenticated`` (bad token) / ``Unavailable`` (cannot check now)."""
        ...

    async def authorize(self, who: Principal, action: Action) -> None:
        """Return when allowed; ``Forbidden`` naming the action, or ``Unavailable``."""
        ...


class TtlCache(Generic[V]):
    """A bounded LRU map whose entries expire; ``clock`` is injected (monotonic seconds)."""

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        self._max = max_entries
        self._clock = clock
        self._items: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        if hit[0] <= self._clock():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return hit[1]

    def put(self, key: Hashable, value: V, ttl: float) -> None:
        self._items[key] = (self._clock() + ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class StaticToken:
    """One shared token (a file), for standalone use: its holder may do everything."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("empty static token")
        self._expected = token.encode()

    def matches(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self._expected)

    async def authenticate(self, token: str) -> Principal:
        if not self.matches(token):
            raise errors.Unauthenticated("wrong bearer token")
        return Principal(STATIC_USER, source="static")

    async def authorize(self, who: Principal, action: Action) -> None:
        if who.source != "static":
            raise errors.Forbidden(f"{who.username} may not {action.describe()}")


class ReviewApi(Protocol):
    """The two API calls ``KubernetesAuth`` makes (``locality.kube.Kube`` has them)."""

    async def token_review(self, token: str, audiences: Sequence[str]) -> dict[str, Any]: ...

    async def subject_access_review(
        self,
        *,
        user: str,
        groups: Sequence[str],
        uid: str,
        extra: Mapping[str, Sequence[str]],
        verb: str,
        group: str,
        resource: str,
        namespace: str = "",
        name: str = "",
    ) -> dict[str, Any]: ...


@dataclass
class KubernetesAuth:
    """TokenReview + SubjectAccessReview with short-lived caches of both answers."""

    api: ReviewApi
    audience: str = AUDIENCE
    allow_ttl: float = 10.0
    deny_ttl: float = 2.0
    max_entries: int = 4096
    clock: Callable[[], float] = time.monotonic
    _tokens: TtlCache[Principal | str] = field(init=False)
    _access: TtlCache[str] = field(init=False)  # "" allowed, else the denial message

    def __post_init__(self) -> None:
        self._tokens = TtlCache(self.max_entries, self.clock)
        self._access = TtlCache(self.max_entries, self.clock)

    async def authenticate(self, token: str) -> Principal:
        key = hashlib.sha256(token.encode()).digest()  # the cache never holds a token itself
        hit = self._tokens.get(key)
        if hit is None:
            hit = await self._review(token)
            self._tokens.put(key, hit, self.allow_ttl if isinstance(hit, Principal) else self.deny_ttl)
        if isinstance(hit, str):
            raise errors.Unauthenticated(hit)
        return hit

    async def _review(self, token: str) -> Principal | str:
        try:
            status = await self.api.token_review(token, [self.audience])
        except KubeError as exc:
            raise errors.Unavailable(f"cannot verify the token: TokenReview failed: {exc}") from exc
        return principal_from_review(status, self.audience)

    async def authorize(self, who: Principal, action: Action) -> None:
        if who.source != "kubernetes":
            raise errors.Forbidden(f"{who.username} may not {action.describe()}")
        key = (who, action)
        denial = self._access.get(key)
        if denial is None:
            denial = await self._access_review(who, action)
            self._access.put(key, denial, self.deny_ttl if denial else self.allow_ttl)
        if denial:
            raise errors.Forbidden(denial)

    async def _access_review(self, who: Principal, action: Action) -> str:
        try:
            status = await self.api.subject_access_review(
                user=who.username,
                groups=list(who.groups),
                uid=who.uid,
                extra={k: list(v) for k, v in who.extra},
                verb=action.verb,
                group=API_GROUP,
                resource=action.resource,
                namespace=action.namespace,
                name=action.name,
            )
        except KubeError as exc:
            raise errors.Unavailable(f"cannot check access: SubjectAccessReview failed: {exc}") from exc
        if status.get("allowed") is True and status.get("denied") is not True:
            return ""
        reason = str(status.get("reason") or "").strip()
        return f"{who.username} may not {action.describe()}" + (f" ({reason[:200]})" if reason else "")


def principal_from_review(status: Mapping[str, Any], audience: str) -> Principal | str:
    """The caller a TokenReview status vouches for, or the reason (one line) it does not."""
    if status.get("authenticated") is not True:
        detail = str(status.get("error") or "not authenticated").splitlines()[0][:200]
        return f"token refused by the API server: {detail}"
    audiences = status.get("audiences")
    if isinstance(audiences, list) and audience not in audiences:
        return f"token is not for audience {audience!r}"
    user = status.get("user") if isinstance(status.get("user"), Mapping) else {}
    assert isinstance(user, Mapping)
    name = user.get("username")
    if not isinstance(name, str) or not name:
        return "token review named no user"
    extra = user.get("extra") if isinstance(user.get("extra"), Mapping) else {}
    assert isinstance(extra, Mapping)
    return Principal(
        username=name,
        uid=str(user.get("uid") or ""),
        groups=tuple(str(g) for g in user.get("groups") or ()),
        extra=tuple(sorted((str(k), tuple(str(x) for x in v or ())) for k, v in extra.items())),
    )


class Chain:
    """Try each authenticator in turn (static first: its token never goes to the API server);
    the one that accepted a token decides what its principal may do."""

    def __init__(self, static: StaticToken | None, kube: KubernetesAuth | None) -> None:
        if static is None and kube is None:
            raise ValueError("no authenticator: give a static token file or a Kubernetes API")
        self.static, self.kube = static, kube

    async def authenticate(self, token: str) -> Principal:
        if self.static is not None and (self.kube is None or self.static.matches(token)):
            return await self.static.authenticate(token)
        assert self.kube is not None
        return await self.kube.authenticate(token)

    async def authorize(self, who: Principal, action: Action) -> None:
        if who.source == "static" and self.static is not None:
            return await self.static.authorize(who, action)
        if self.kube is None:
            raise errors.Forbidden(f"{who.username} may not {action.describe()}")
        return await self.kube.authorize(who, action)


def build(static_token: str | None, api: ReviewApi | None) -> Chain:
    """The authenticator of a service: the cluster's when ``api`` is given, the static token if set."""
    return Chain(
        StaticToken(static_token) if static_token else None,
        KubernetesAuth(api) if api is not None else None,
    )


@dataclass(frozen=True, slots=True)
class Rule:
    """The RBAC check a route needs: ``scope`` "caller" = the caller's own namespace (cluster-wide
    for callers that are not ServiceAccounts), "cluster" = cluster-wide; ``name_from`` a path part."""

    verb: str
    resource: str
    scope: str = "cluster"
    name_from: str | None = None

    def action(self, who: Principal, match_info: Mapping[str, str]) -> Action:
        namespace = (who.namespace or "") if self.scope == "caller" else ""
        name = match_info.get(self.name_from, "") if self.name_from else ""
        return Action(self.verb, self.resource, namespace, name)


def bearer_of(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def rules_table(rows: Sequence[tuple[str, str, Rule]]) -> dict[tuple[str, str], Rule]:
    """``[(method, route name, rule)]`` -> a lookup table for ``authmw.auth_middleware``."""
    return {(method, name): rule for method, name, rule in rows}
