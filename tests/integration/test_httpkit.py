"""The shared HTTP kit through a real aiohttp server: bodies, JSON errors, auth."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from locality.auth import Rule, StaticToken
from locality.authmw import auth_middleware
from locality.httpkit import error_middleware, read_json_object
from tests.fixtures.ports import free_port


async def _echo(request: web.Request) -> web.Response:
    body = await read_json_object(request, required=("uri",), optional=("note",), max_bytes=64 * 1024)
    return web.json_response(body)


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("secret internals")


HUNG_UP = web.AppKey("hung_up", asyncio.Event)


async def _late(request: web.Request) -> web.StreamResponse:
    """Answers only after its client has hung up: the answer's first write fails."""
    for _ in range(500):
        if request.transport is None or request.transport.is_closing():
            break
        await asyncio.sleep(0.01)
    request.app[HUNG_UP].set()
    resp = web.StreamResponse()
    await resp.prepare(request)
    return resp


async def _upstream_refused(request: web.Request) -> web.Response:
    raise ConnectionRefusedError("upstream refused")


def _app() -> web.Application:
    rules = {("POST", "echo"): Rule("create", "echoes")}
    app = web.Application(
        middlewares=[error_middleware, auth_middleware(StaticToken("tok"), rules, {"POST"})]
    )
    app.router.add_post("/echo", _echo, name="echo")
    app.router.add_get("/boom", _boom)
    app.router.add_get("/late", _late)
    app.router.add_get("/refused", _upstream_refused)
    app[HUNG_UP] = asyncio.Event()
    return app


AUTH = {"Authorization": "Bearer tok"}


async def test_body_split_over_many_chunks_is_read_whole(aiohttp_client: Any) -> None:
    client = await aiohttp_client(_app())
    payload = json.dumps({"uri": "s3://models/x", "note": "n" * 40_000}).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 1000):
            yield payload[i : i + 1000]

    resp = await client.post("/echo", data=pieces(), headers=AUTH)
    assert resp.status == 200
    assert (await resp.json())["note"] == "n" * 40_000


async def test_bad_bodies_get_4xx_json(aiohttp_client: Any) -> None:
    client = await aiohttp_client(_app())
    cases = {
        b"{not json": 400,
        b"[1, 2]": 400,
        b'{"uri": "s3://m/x", "extra": 1}': 400,
        b'{"note": "no uri"}': 400,
        b"[" * 100_000 + b"]" * 100_000: 413,
        b'{"uri": ' + b"[" * 20_000 + b"]" * 20_000 + b"}": 400,  # nesting deeper than the parser
        b"\xff\xfe": 400,
    }
    for body, status in cases.items():
        resp = await client.post("/echo", data=body, headers=AUTH)
        assert resp.status == status, (body[:40], resp.status)
        assert "error" in await resp.json()


async def test_missing_or_wrong_token_is_401(aiohttp_client: Any) -> None:
    client = await aiohttp_client(_app())
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic tok"}):
        resp = await client.post("/echo", json={"uri": "s3://m/x"}, headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_unexpected_errors_are_500_json_without_internals(aiohttp_client: Any) -> None:
    client = await aiohttp_client(_app())
    resp = await client.get("/boom")
    assert resp.status == 500
    body = await resp.json()
    assert "secret internals" not in body["error"]


async def test_unknown_route_and_method_are_json(aiohttp_client: Any) -> None:
    client = await aiohttp_client(_app())
    assert (await client.get("/nope")).status == 404
    resp = await client.get("/echo")
    assert resp.status == 405 and "error" in await resp.json()


async def test_a_client_that_hung_up_is_not_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """A hang-up (the client timed out) is the client's business: no traceback, no ERROR line.
    Served as ``locality.serve`` runs apps (handlers are not cancelled when a client leaves)."""
    app = _app()
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    caplog.set_level(logging.DEBUG, logger="locality.httpkit")
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(asyncio.TimeoutError):
                await session.get(f"http://127.0.0.1:{port}/late", timeout=aiohttp.ClientTimeout(total=0.2))
        await asyncio.wait_for(app[HUNG_UP].wait(), 5)
        for _ in range(100):  # the handler's failed write comes right after the event
            if any("client went away" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.01)
    finally:
        await runner.cleanup()
    assert any("client went away during GET /late" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_connection_error_of_our_own_is_still_a_logged_500(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = await aiohttp_client(_app())
    resp = await client.get("/refused")
    assert resp.status == 500 and "upstream" not in (await resp.json())["error"]
    assert any(r.levelno == logging.ERROR and "GET /refused" in r.getMessage() for r in caplog.records)
