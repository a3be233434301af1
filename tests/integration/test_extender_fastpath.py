"""The scheduler verbs' fast path (scheduler_extender.fastpath) on a real socket: kube-scheduler's
requests are answered as the aiohttp routes answer them, and anything else on the same connection
(a probe, a chunked body, a pipelined mix) is handed to aiohttp unharmed."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from locality.contract import LOCALITY_ANNOTATION, MODELS_ANNOTATION
from scheduler_extender.app import Deps, create_app, fast_site
from scheduler_extender.config import Settings
from scheduler_extender.nodecache import NodeCache
from tests.fixtures.extender import A, models_annotation


def node(name: str, ready: bool) -> dict[str, Any]:
    labels = {A.label_key: "ready"} if ready else {}
    return {"metadata": {"name": name, "labels": labels, "annotations": models_annotation(ready)}}


@pytest.fixture()
async def port() -> AsyncIterator[int]:
    cache = NodeCache()
    cache.replace([node("warm", True), node("cold", False)])
    app = create_app(Settings(url_prefix="/scheduler"), Deps(node_cache=cache))
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = fast_site(app)(runner, sock)
    await site.start()
    try:
        yield sock.getsockname()[1]
    finally:
        await runner.cleanup()
        sock.close()


def request(path: str, body: object) -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(raw)}"
    return head.encode() + b"\r\n\r\n" + raw


async def responses(port: int, payload: bytes, count: int) -> list[tuple[int, Any]]:
    """Send ``payload`` on one connection (pieces of 7 bytes: split reads) and read ``count`` answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(0, len(payload), 7):
        writer.write(payload[i : i + 7])
    await writer.drain()
    out = []
    for _ in range(count):
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        out.append((status, json.loads(await reader.readexactly(length))))
    writer.close()
    return out


def args(required: bool = False) -> dict[str, Any]:
    annotations = {MODELS_ANNOTATION: A.uri, **({LOCALITY_ANNOTATION: "required"} if required else {})}
    pod = {"metadata": {"name": "p", "namespace": "ns", "annotations": annotations}}
    return {"Pod": pod, "Nodes": None, "NodeNames": ["cold", "warm", "ghost"]}


async def test_verbs_then_a_probe_on_one_connection(port: int) -> None:
    payload = (
        request("/scheduler/filter", args(required=True))
        + request("/scheduler/prioritize", args())
        + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        + request("/scheduler/prioritize", args())  # after the hand-over: aiohttp answers it
    )
    (s1, filtered), (s2, scored), (s3, health), (s4, again) = await responses(port, payload, 4)
    assert (s1, s2, s3, s4) == (200, 200, 200, 200)
    assert filtered["NodeNames"] == ["warm"] and set(filtered["FailedNodes"]) == {"cold", "ghost"}
    assert scored == again == [{"Host": "warm", "Score": 10}]
    assert health == {"status": "ok"}


async def test_bad_body_is_a_400_with_a_reason(port: int) -> None:
    raw = b'{"Pod": {'
    payload = f"POST /scheduler/filter HTTP/1.1\r\nContent-Length: {len(raw)}\r\n\r\n".encode() + raw
    [(status, body)] = await responses(port, payload, 1)
    assert status == 400 and "error" in body


async def test_requests_kube_scheduler_never_sends_go_to_aiohttp(port: int) -> None:
    raw = json.dumps(args()).encode()
    chunked = (
        b"POST /scheduler/prioritize HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(raw):x}\r\n".encode() + raw + b"\r\n0\r\n\r\n"
    )
    wrong_path = request("/prioritize", args())  # not under the prefix: aiohttp's 404
    (s1, scored), (s2, missing) = await responses(port, chunked + wrong_path, 2)
    assert (s1, scored) == (200, [{"Host": "warm", "Score": 10}])
    assert s2 == 404 and "error" in missing


async def test_both_paths_are_counted(port: int) -> None:
    await responses(port, request("/scheduler/prioritize", args()) + request("/scheduler/filter", b"x"), 2)
    [(status, _)] = await responses(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 1)
    assert status == 200
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    assert 'model_locality_extender_requests_total{code="200",verb="prioritize"} 1.0' in text
    assert 'model_locality_extender_requests_total{code="400",verb="filter"} 1.0' in text
    assert 'model_locality_extender_requests_total{code="200",verb="healthz"} 1.0' in text
