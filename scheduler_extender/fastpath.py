"""The scheduler's two verbs without the web framework: a small HTTP/1.1 protocol on the same port.

kube-scheduler calls ``filter`` then ``prioritize`` for every pod, one after the other, each on a
kept-alive connection; aiohttp's per-request machinery cost more than the verbs themselves
(bench/README.md, the drain). A connection is served here as long as it sends exactly what
kube-scheduler sends: ``POST <prefix>/filter`` or ``<prefix>/prioritize``, HTTP/1.1, a
``Content-Length`` body within ``--max-body-bytes``, no ``Transfer-Encoding`` or ``Expect``. At the
first request that is anything else (a probe, ``/metrics``, the REST API, a chunked body, garbage)
the connection, with every byte not answered yet, is handed to aiohttp, which answers it and all
that follows exactly as before. Answers and errors are the aiohttp routes' (``VerbContext.answer``,
``{"error": ...}`` with 400), and the request metrics count both paths alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from locality import errors
from locality.httpkit import status_of
from scheduler_extender.metrics import Metrics
from scheduler_extender.verbs import VerbContext

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024  # a header block larger than this is not kube-scheduler's: aiohttp's turn
_REASONS = {200: b"OK", 400: b"Bad Request", 500: b"Internal Server Error"}
_HEAD = b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n"


class Verbs:
    """What a fast connection needs: the verb paths, the shared verb core, the metrics."""

    def __init__(self, prefix: str, ctx: VerbContext, metrics: Metrics) -> None:
        self.paths = {f"{prefix}/filter".encode(): "filter", f"{prefix}/prioritize".encode(): "prioritize"}
        self.ctx, self.metrics = ctx, metrics
        self.max_body = ctx.max_body_bytes

    def respond(self, verb: str, body: bytes) -> tuple[int, bytes]:
        started = time.perf_counter()
        try:
            status, payload = 200, self.ctx.answer(verb, body)
        except errors.LocalityError as exc:
            status, payload = status_of(exc), _error(exc.message)
        except Exception:
            log.exception("unhandled error on POST %s", verb)
            status, payload = 500, _error("internal error; see the server log")
        self.metrics.requests.labels(verb, str(status)).inc()
        self.metrics.latency.labels(verb).observe(time.perf_counter() - started)
        return status, payload


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


class VerbProtocol(asyncio.Protocol):
    """One connection: verbs answered here until the first request that is not one."""

    def __init__(self, verbs: Verbs, fallback: Callable[[], asyncio.BaseProtocol], live: set[Any]) -> None:
        self._verbs, self._fallback, self._live = verbs, fallback, live
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._live.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._live.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None and self._buffer:
            request = self._next_request()
            if request is None:
                return
            verb, body, close = request
            status, payload = self._verbs.respond(verb, body)
            self._transport.write(
                _HEAD % (status, _REASONS.get(status, b"Error"), len(payload))
                + (b"Connection: close\r\n\r\n" if close else b"\r\n")
                + payload
            )
            if close:
                self._transport.close()
                return

    def _next_request(self) -> tuple[str, bytes, bool] | None:
        """The next complete verb request (removed from the buffer); None when more bytes are
        needed or the connection went to aiohttp."""
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                self._hand_over()
            return None
        parsed = _parse_head(bytes(self._buffer[:end]), self._verbs)
        if parsed is None:
            self._hand_over()
            return None
        verb, length, close = parsed
        start = end + 4
        if len(self._buffer) < start + length:
            return None
        body = bytes(self._buffer[start : start + length])
        del self._buffer[: start + length]
        return verb, body, close

    def _hand_over(self) -> None:
        """From here on aiohttp serves this connection, starting with the unanswered bytes."""
        transport, pending = self._transport, bytes(self._buffer)
        assert transport is not None
        self._transport, self._buffer = None, bytearray()
        self._live.discard(transport)
        handler = self._fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if pending and isinstance(handler, asyncio.Protocol):
            handler.data_received(pending)


def _parse_head(head: bytes, verbs: Verbs) -> tuple[str, int, bool] | None:
    """(verb, body length, close after) for a request kube-scheduler would send; None otherwise."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1" or parts[1] not in verbs.paths:
        return None
    length, close = -1, False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            return None
        key, value = name.strip().lower(), value.strip()
        if key == b"content-length":
            if not value.isdigit() or length >= 0:
                return None
            length = int(value)
        elif key in (b"transfer-encoding", b"expect"):
            return None
        elif key == b"connection":
            close = value.lower() == b"close"
    if length < 0 or length > verbs.max_body:
        return None
    return verbs.paths[parts[1]], length, close


class FastSite(web.SockSite):
    """``web.SockSite`` whose connections start on ``VerbProtocol`` (aiohttp's otherwise)."""

    def __init__(self, runner: web.BaseRunner, sock: Any, verbs: Verbs) -> None:
        super().__init__(runner, sock)
        self._verbs = verbs
        self._live: set[Any] = set()

    async def start(self) -> None:
        """``SockSite.start`` with our protocol factory in front of aiohttp's."""
        self._runner._reg_site(self)
        fallback = self._runner.server
        assert fallback is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: VerbProtocol(self._verbs, fallback, self._live), sock=self._sock, backlog=self._backlog
        )

    async def stop(self) -> None:
        for transport in list(self._live):
            transport.close()
        await super().stop()
