"""REST client of the local agent: ask for a model and wait until it is ready (init containers, serving).

``wait_ready`` POSTs the URI (idempotent on the agent), then polls ``GET /v1/models/{id}`` until
the state is ``ready`` (returns the local path) or ``failed`` (raises with the agent's error).
A refused connection is retried until the deadline: the agent may still be starting.

The bearer token is the pod's projected ServiceAccount token (audience ``model-locality``), which
the kubelet rotates: ``token_source`` is called for every request, and ``file_token`` re-reads
the file each time rather than keeping the first token for a wait that may outlive it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from locality.identity import InvalidURI, model_ref
from locality.settings import ConfigError, load_token

REQUEST_SECONDS = 10.0  # one request's limit, clipped to the time left before the deadline
# Where the install's projected ServiceAccount token lands in a serving pod (the webhook's
# injection mounts it there): clients use it when no token file is configured and it exists.
DEFAULT_TOKEN_FILE = "/var/run/secrets/model-locality/token"
TokenSource = Callable[[], str | None]


class AgentError(Exception):
    """The agent said no (failed fetch, bad request, auth) or did not answer in time."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def client_token_file(configured: str | None, default: str = DEFAULT_TOKEN_FILE) -> str | None:
    """The token file a client sends from: the configured one, else ``default`` if it exists."""
    if configured:
        return configured
    return default if os.path.isfile(default) else None


def file_token(path: str) -> TokenSource:
    """A token source that reads ``path`` on every call (the kubelet swaps it atomically)."""

    def read() -> str | None:
        try:
            return load_token(path)
        except ConfigError as exc:
            raise AgentError(str(exc)) from exc

    return read


async def wait_ready(
    agent_url: str,
    uri: str,
    *,
    token: str | None = None,
    token_source: TokenSource | None = None,
    timeout: float,  # noqa: ASYNC109 - a total deadline across many requests, not one call's
    poll: float = 0.5,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    on_retry: Callable[[str], None] | None = None,
) -> Path:
    """Have the agent at ``agent_url`` fetch ``uri``; return the model's local directory.

    ``on_retry`` hears why each try did not get an answer (agent unreachable, 5xx, ...). No
    request outlives the deadline: each one's timeout is clipped to the time left. The token is
    ``token_source()`` when given (asked before every request), else the fixed ``token``.
    """
    try:
        ref = model_ref(uri)
    except InvalidURI as exc:
        raise AgentError(str(exc)) from exc
    base = agent_url.rstrip("/")
    source: TokenSource = token_source if token_source is not None else (lambda: token)
    deadline = time.monotonic() + timeout
    last = "no answer from the agent yet"
    posted = False
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                if not posted:
                    await _call(
                        session,
                        "POST",
                        f"{base}/v1/models",
                        _auth(source),
                        {"uri": ref.uri},
                        deadline=deadline,
                    )
                    posted = True
                view = await _call(
                    session, "GET", f"{base}/v1/models/{ref.id}", _auth(source), None, deadline=deadline
                )
            except _Retry as exc:
                last = str(exc)
                posted = posted and not exc.gone  # evicted or agent restarted: ask again
                if on_retry is not None:
                    on_retry(last)
            else:
                if on_progress is not None:
                    on_progress(view)
                if view.get("state") == "ready" and view.get("path"):
                    return Path(str(view["path"]))
                if view.get("state") == "failed":
                    raise AgentError(f"fetch of {ref.uri} failed: {view.get('error') or 'unknown error'}")
                last = f"state {view.get('state')}"
            await asyncio.sleep(max(0.0, min(poll, deadline - time.monotonic())))
    raise AgentError(f"timed out after {timeout:g}s waiting for {ref.uri} ({last})", timed_out=True)


def _auth(source: TokenSource) -> dict[str, str]:
    token = source()
    return {"Authorization": f"Bearer {token}"} if token else {}


class _Retry(Exception):
    def __init__(self, message: str, *, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone


async def _call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    body: Any,
    *,
    deadline: float,
) -> dict[str, Any]:
    """One request; ``_Retry`` for what may pass (connection, 5xx, 404), ``AgentError`` for the rest."""
    try:
        left = min(REQUEST_SECONDS, deadline - time.monotonic())
        if left <= 0:
            raise _Retry("no time left for another request")
        timeout = aiohttp.ClientTimeout(total=left)
        async with session.request(method, url, headers=headers, json=body, timeout=timeout) as resp:
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = None
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _Retry(f"agent not reachable at {url}: {exc or type(exc).__name__}") from exc
    error = data.get("error") if isinstance(data, dict) else None
    if status == 404:
        raise _Retry(f"agent does not know the model yet: {error}", gone=True)
    if status >= 500 or status == 409:
        raise _Retry(f"agent answered {status}: {error}")
    if status >= 400:
        raise AgentError(f"agent refused {method} ({status}): {error or 'no detail'}")
    if not isinstance(data, dict):
        raise _Retry(f"agent answered {status} without a JSON object")
    return data
