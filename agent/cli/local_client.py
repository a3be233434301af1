"""The CLI's side of the daemon's local API (``<root>/agent.sock``): one HTTP exchange per call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from agent.face.socket import short_path
from locality.cli import CliError

POLL_SECONDS = 0.2


class LocalAgent:
    """Calls to the daemon that owns a cache root, over its Unix socket (no token: mode 0600)."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        return asyncio.run(self._call(method, path, body))

    def fetch(self, uri: str, progress: Callable[[int, int | None], None] | None = None) -> dict[str, Any]:
        """POST the model, poll until it is ready (its view) or failed (``CliError``)."""
        return asyncio.run(self._fetch(uri, progress or (lambda done, total: None)))

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        with short_path(self.socket) as where:
            connector = aiohttp.UnixConnector(path=where)
            timeout = aiohttp.ClientTimeout(total=300)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                return await _exchange(session, method, path, body)

    async def _fetch(self, uri: str, progress: Callable[[int, int | None], None]) -> dict[str, Any]:
        with short_path(self.socket) as where:
            connector = aiohttp.UnixConnector(path=where)
            async with aiohttp.ClientSession(connector=connector) as session:
                status, accepted = await _exchange(session, "POST", "/v1/models", {"uri": uri})
                if status >= 400:
                    raise CliError(error_of(accepted, status))
                model_id = str(accepted["id"])
                while True:
                    status, view = await _exchange(session, "GET", f"/v1/models/{model_id}")
                    if status >= 400:
                        raise CliError(error_of(view, status))
                    progress(int(view.get("bytes_done") or 0), view.get("bytes_total"))
                    if view.get("state") == "ready":
                        return dict(view)
                    if view.get("state") == "failed":
                        raise CliError(str(view.get("error") or "fetch failed"))
                    await asyncio.sleep(POLL_SECONDS)


async def _exchange(
    session: aiohttp.ClientSession, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    try:
        async with session.request(method, f"http://agent{path}", json=body) as response:
            return response.status, await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise CliError(f"the local agent did not answer: {exc or type(exc).__name__}") from exc


def error_of(body: Any, status: int) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return f"the local agent answered {status}"
