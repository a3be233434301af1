"""The agent client sends the pod's projected token and reads it again for every request: the
kubelet rotates the file under a long `model-agent wait`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from locality.agentclient import AgentError, client_token_file, file_token, wait_ready

URI = "s3://models/org/rotated"


async def test_each_request_carries_the_token_the_file_holds_now(
    tmp_path: Path, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    seen: list[str] = []

    async def post(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        token_file.write_text("second-token")  # the kubelet rotated it
        return web.json_response({"state": "queued"}, status=202)

    async def get(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        done = len(seen) >= 3
        return web.json_response(
            {"state": "ready" if done else "fetching", "path": "/cache/m" if done else None}
        )

    app = web.Application()
    app.router.add_post("/v1/models", post)
    app.router.add_get("/v1/models/{id}", get)
    server = await aiohttp_server(app)
    path = await wait_ready(
        str(server.make_url("/")), URI, token_source=file_token(str(token_file)), timeout=10, poll=0.01
    )
    assert path == Path("/cache/m")
    assert seen == ["Bearer first-token", "Bearer second-token", "Bearer second-token"]


def test_token_file_vanishing_is_one_clear_error(tmp_path: Path) -> None:
    source = file_token(str(tmp_path / "gone"))
    with pytest.raises(AgentError, match=r"cannot read token file .*gone"):
        source()


@pytest.mark.parametrize(
    ("configured", "default_exists", "expected"),
    [
        pytest.param("/etc/x/token", True, "/etc/x/token", id="configured wins"),
        pytest.param(None, True, "DEFAULT", id="projected default when mounted"),
        pytest.param(None, False, None, id="no token outside a pod"),
    ],
)
def test_which_token_file(
    tmp_path: Path, configured: str | None, default_exists: bool, expected: Any
) -> None:
    default = tmp_path / "token"
    if default_exists:
        default.write_text("t")
    got = client_token_file(configured, default=str(default))
    assert got == (str(default) if expected == "DEFAULT" else expected)
