"""The shared HTTP kit through a real aiohttp server: bodies, JSON errors, auth."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from locality.auth import Rule, StaticToken
from locality.authmw import auth_middleware
from locality.httpkit import error_middleware, read_json_object


async def _echo(request: web.Request) -> web.Response:
    body = await read_json_object(request, required=("uri",), optional=("note",), max_bytes=64 * 1024)
    return web.json_response(body)


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("secret internals")


def _app() -> web.Application:
    rules = {("POST", "echo"): Rule("create", "echoes")}
    app = web.Application(
        middlewares=[error_middleware, auth_middleware(StaticToken("tok"), rules, {"POST"})]
    )
    app.router.add_post("/echo", _echo, name="echo")
    app.router.add_get("/boom", _boom)
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
