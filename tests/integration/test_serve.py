"""``locality.serve.serve``: a real server on a free port; SIGTERM drains; a port in use is one line."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

import aiohttp
import pytest
from aiohttp import web

from locality.serve import serve
from tests.fixtures.polling import eventually
from tests.fixtures.ports import free_port


def slow_app(release: asyncio.Event, events: list[str]) -> web.Application:
    """``/slow`` answers once ``release`` is set; start-up and cleanup are recorded in ``events``."""

    async def slow(_: web.Request) -> web.Response:
        events.append("slow admitted")
        await release.wait()
        return web.json_response({"done": True})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def lifetime(_: web.Application):  # type: ignore[no-untyped-def]
        events.append("started")
        yield
        events.append("cleaned up")

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/healthz", healthz)
    app.cleanup_ctx.append(lifetime)
    return app


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1] if stderr.strip() else ""


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def listening(port: int) -> bool:
    return not await refused(port)


async def test_sigterm_lets_the_open_request_finish_then_exits_0(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "locality.serve")
    release, events, port = asyncio.Event(), [], free_port()
    stopping = asyncio.Event()

    async def before_stop() -> None:
        events.append("stop taking work")
        stopping.set()
        release.set()  # the app's own drain: here, let the admitted request finish

    app = slow_app(release, events)
    server = asyncio.create_task(
        serve(app, prog="demo", host="127.0.0.1", port=port, shutdown_timeout=5, before_stop=before_stop)
    )
    async with aiohttp.ClientSession() as http:
        await eventually(lambda: listening(port), what="the server listens")
        async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 200
        request = asyncio.create_task(http.get(f"http://127.0.0.1:{port}/slow"))
        await eventually(lambda: "slow admitted" in events, what="the slow request is admitted")
        os.kill(os.getpid(), signal.SIGTERM)
        resp = await request
        assert resp.status == 200 and await resp.json() == {"done": True}
        resp.release()
    assert await asyncio.wait_for(server, 10) == 0
    assert events == ["started", "slow admitted", "stop taking work", "cleaned up"]
    assert await refused(port), "the listener is closed after the drain"
    said = [r.getMessage() for r in caplog.records if r.name == "locality.serve"]
    assert said == [f"listening on 127.0.0.1:{port}", "stop signal: stopping (open requests get up to 5s)"]


async def test_port_in_use_is_one_line_and_exit_1_before_start_up(capsys: pytest.CaptureFixture[str]) -> None:
    events: list[str] = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = await serve(
            slow_app(asyncio.Event(), events), prog="model-demo serve", host="127.0.0.1", port=port,
            shutdown_timeout=1,
        )  # fmt: skip
    assert code == 1
    line = f"model-demo serve: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert last_line(capsys.readouterr().err) == line
    assert events == [], "no start-up work is done when the port cannot be had"


async def test_a_failure_message_ends_the_server_with_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    events: list[str] = []
    failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    port = free_port()
    server = asyncio.create_task(
        serve(slow_app(asyncio.Event(), events), prog="demo", host="127.0.0.1", port=port,
              shutdown_timeout=1, failed=failed)
    )  # fmt: skip
    await eventually(lambda: "started" in events, what="start-up")
    failed.set_result("model load failed: config.json is not JSON")
    assert await asyncio.wait_for(server, 10) == 1
    assert last_line(capsys.readouterr().err) == "demo: model load failed: config.json is not JSON"
    assert events == ["started", "cleaned up"]


async def test_a_signal_during_start_up_stops_the_server_once_started() -> None:
    events: list[str] = []
    app = slow_app(asyncio.Event(), events)

    async def slow_start(_: web.Application) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # arrives while start-up still runs
        await asyncio.sleep(0)
        events.append("start-up done")

    app.on_startup.append(slow_start)
    code = await asyncio.wait_for(
        serve(app, prog="demo", host="127.0.0.1", port=free_port(), shutdown_timeout=1), 10
    )
    assert code == 0 and events == ["started", "start-up done", "cleaned up"]
