"""Who may read from an agent's peer endpoint: other agents only, and how an agent proves it is one.

In a cluster a caller presents a ServiceAccount token for the audience ``model-locality-peer``
(``locality.auth.PEER_AUDIENCE``); the API server checks it (TokenReview, cached like the REST
API's) and it must name the agents' own ServiceAccount: a serving pod's token, any other pod's,
and a token for another audience are refused. Standalone agents (no cluster) share a peer token
file instead. Nothing is open: without either, every peer call is refused.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Protocol

from locality import errors
from locality.auth import PEER_AUDIENCE, KubernetesAuth, ReviewApi

DEFAULT_IDENTITY = "system:serviceaccount:model-locality:model-locality-agent"


class PeerGate(Protocol):
    async def admit(self, token: str) -> None:
        """Return when ``token`` is an agent's; else ``Unauthenticated``/``Forbidden``/``Unavailable``."""
        ...


class KubePeerGate:
    """TokenReview for ``model-locality-peer``, then the agents' ServiceAccount name."""

    def __init__(self, api: ReviewApi, identity: str = DEFAULT_IDENTITY) -> None:
        self._auth = KubernetesAuth(api, audience=PEER_AUDIENCE)
        self.identity = identity

    async def admit(self, token: str) -> None:
        who = await self._auth.authenticate(token)
        if who.username != self.identity:
            raise errors.Forbidden(
                f"{who.username} is not a model-locality agent; only agents read from agents"
            )


class StaticPeerGate:
    """Standalone agents: one shared peer token, compared in constant time."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("empty peer token")
        self._token = token.encode()

    async def admit(self, token: str) -> None:
        if not hmac.compare_digest(token.encode(), self._token):
            raise errors.Unauthenticated("wrong peer token")


class ClosedGate:
    async def admit(self, token: str) -> None:
        raise errors.Unauthenticated("this agent has no peer identity configured; it serves no peer")


class TokenSource:
    """The token this agent presents to peers: a file read again for each use (projected tokens
    rotate), or a fixed string (tests)."""

    def __init__(self, path: str | None = None, token: str | None = None) -> None:
        self._path, self._token = path, token

    def __call__(self) -> str:
        if self._token is not None:
            return self._token
        if self._path is None:
            raise errors.Unavailable("no peer token configured")
        try:
            return Path(self._path).read_text().strip()
        except OSError as exc:
            raise errors.Unavailable(f"cannot read the peer token {self._path}: {exc.strerror}") from exc
