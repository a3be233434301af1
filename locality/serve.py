"""The one way our services run their HTTP server: listen, log it, stop on SIGTERM/SIGINT with a drain.

Every service (agent, extender, serving) starts through ``serve``: a port in use is one stderr
line and exit 1 (before any start-up work), a stop signal first lets the app stop taking work
(``before_stop``), then closes the listener, gives open requests ``shutdown_timeout`` seconds and
runs the app's cleanup (``cleanup_ctx``: checkpoints, last syncs), and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from locality.httpkit import QuietProbeAccessLogger

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_FAILED = 1


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``OSError`` when the port is taken or the host bad)."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def listen_error(host: str, port: int, exc: OSError) -> str:
    """``cannot listen on HOST:PORT: Address already in use`` (the short strerror, not aiohttp's sentence)."""
    reason = exc.strerror or (str(exc) if not isinstance(exc, socket.gaierror) else "bad address")
    return f"cannot listen on {host}:{port}: {reason}"


async def serve(
    app: web.Application,
    *,
    prog: str,
    host: str,
    port: int,
    shutdown_timeout: float,
    access_log_class: type[AbstractAccessLogger] = QuietProbeAccessLogger,
    before_stop: Callable[[], Awaitable[None]] | None = None,
    failed: asyncio.Future[str] | None = None,
    site: Callable[[web.BaseRunner, socket.socket], web.BaseSite] = web.SockSite,
) -> int:
    """Serve ``app`` until a stop signal (exit 0) or until ``failed`` gets a message (printed, exit 1).

    ``before_stop``: the app's own "stop taking work" (e.g. refuse new requests and wait for the
    admitted ones) run while the listener still answers, so probes can report not-ready. ``site``:
    the listener on the bound socket (a ``web.SockSite`` unless a service brings its own). A signal
    during start-up (``on_startup``, ``cleanup_ctx``) stops the server as soon as it has started.
    """
    try:
        sock = bind(host, port)
    except OSError as exc:
        print(f"{prog}: {listen_error(host, port, exc)}", file=sys.stderr)
        return EXIT_FAILED
    runner = web.AppRunner(
        app, access_log_class=access_log_class, handle_signals=False, shutdown_timeout=shutdown_timeout
    )
    with _StopSignals() as signalled:
        try:
            await runner.setup()
            await site(runner, sock).start()
            log.info("listening on %s:%d", host, port)
            message = await _first(signalled, failed)
            if message is not None:
                print(f"{prog}: {message}", file=sys.stderr)
                return EXIT_FAILED
            log.info("stop signal: stopping (open requests get up to %.0fs)", shutdown_timeout)
            if before_stop is not None:
                await before_stop()
            return 0
        finally:
            await runner.cleanup()
            sock.close()


class _StopSignals:
    """SIGTERM and SIGINT set an event while the block runs (instead of killing the process)."""

    def __enter__(self) -> asyncio.Event:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        for sig in STOP_SIGNALS:
            self._loop.add_signal_handler(sig, self._event.set)
        return self._event

    def __exit__(self, *_: object) -> None:
        for sig in STOP_SIGNALS:
            self._loop.remove_signal_handler(sig)


async def _first(signalled: asyncio.Event, failed: asyncio.Future[str] | None) -> str | None:
    """Wait for the stop signal (``None``) or a failure message, whichever comes first."""
    waiter = asyncio.ensure_future(signalled.wait())
    try:
        either: set[asyncio.Future[Any]] = {waiter} if failed is None else {waiter, failed}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return None if signalled.is_set() or failed is None else failed.result()
