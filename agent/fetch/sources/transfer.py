"""The lean data path: a blocking ranged GET that reads into a reused buffer, ``pwrite``s and hashes.

``readinto`` a reused buffer + ``os.pwrite`` reaches the page-cache ceiling from Python, while
boto3 and aiohttp's stream readers are CPU-bound at a third to a half of it (``bench/fetch.py``). So the
bytes of every source go through here, one ``RangeReader`` per fetch thread, each keeping its
keep-alive connections and its buffer (memory per fetch = concurrency x buffer, whatever the model).
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from urllib.parse import urljoin, urlsplit

import xxhash

from agent.fetch.sources.base import PERMANENT_STATUSES, HttpTarget, SourceError
from agent.fetch.sources.network import Proxy, parse_proxy, tls_context

BUFFER_BYTES = 1 << 20
_REDIRECTS = {301, 302, 303, 307, 308}


class Stopped(Exception):
    """The fetch was cancelled; the chunk keeps what it received so far."""


class LocalWriteError(OSError):
    """Writing the staging file failed (ENOSPC, EIO, ...): not the origin's fault, not retried here."""


class _Conn(http.client.HTTPConnection):
    """Plain HTTP on a blocking socket with kernel timeouts, so a body read can wait for a whole
    buffer in one ``recv(MSG_WAITALL)``: one syscall and one GIL hand-off per MiB instead of one
    per ~64 KiB segment (Python's own socket timeouts make the socket non-blocking, which defeats it).
    """

    read_timeout: float | None = None  # kernel timeout of reads; ``timeout`` bounds the connect

    def connect(self) -> None:
        super().connect()
        assert self.sock is not None
        seconds = self.read_timeout or (
            float(self.timeout) if isinstance(self.timeout, (int, float)) else 30.0
        )
        whole = int(seconds)
        timeval = struct.pack("ll", whole, max(1000, int((seconds - whole) * 1e6)))
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class _TlsConn(http.client.HTTPSConnection):
    """HTTPS whose ``timeout`` bounds the connect and handshake; reads then wait ``read_timeout``."""

    read_timeout: float | None = None

    def connect(self) -> None:
        super().connect()
        if self.sock is not None and self.read_timeout:
            self.sock.settimeout(self.read_timeout)


@dataclass(eq=False)
class ChunkJob:
    """One chunk of one file on its way: where it goes, how far it got, its running xxh3_128."""

    fd: int
    offset: int
    length: int
    file_size: int
    ranged: bool = True
    received: int = 0
    hasher: xxhash.xxh3_128 = field(default_factory=xxhash.xxh3_128)

    def restart(self) -> None:
        self.received = 0
        self.hasher = xxhash.xxh3_128()


class RangeReader:
    """One fetch thread's HTTP client: a reused buffer and one keep-alive connection per origin."""

    def __init__(
        self,
        stop: threading.Event,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        buffer_bytes: int = BUFFER_BYTES,
    ):
        self._stop = stop
        self._timeout = timeout  # seconds without a byte of the answer
        self._connect_timeout = connect_timeout
        self._buf = memoryview(bytearray(buffer_bytes))
        self._conns: dict[tuple[str, str], http.client.HTTPConnection] = {}
        self._active: http.client.HTTPConnection | None = None

    def fetch(
        self, target: HttpTarget, job: ChunkJob, etag: str | None, on_bytes: Callable[[int], None]
    ) -> None:
        """Fill ``job`` from its ``received`` mark to its end; raise ``SourceError`` or ``Stopped``."""
        url, first = target.url, target
        for _ in range(6):
            resp = self._request(url, target, job)
            if resp.status not in _REDIRECTS:
                break
            location = resp.getheader("Location") or ""
            self._drop(url)
            url = urljoin(url, location)
            target = _redirected(first, url)
        else:
            raise SourceError(f"{target.url}: too many redirects", permanent=True)
        try:
            self._check(url, resp, job, etag, redirected=url != first.url)
            self._stream(resp, job, on_bytes)
        except SourceError:
            if not resp.isclosed():  # an error answer read to its end leaves the connection usable
                self._drop(url)
            raise
        except LocalWriteError:
            self._drop(url)
            raise  # the caller decides (ENOSPC is "no space", not a flaky origin)
        except (OSError, http.client.HTTPException) as exc:
            why = self._why(exc, connected=True)
            self._drop(url)
            if self._stop.is_set():
                raise Stopped() from exc
            raise SourceError(f"{_redact(url)}: {why}", permanent=False) from exc
        except BaseException:
            self._drop(url)
            raise

    def abort(self) -> None:
        """From another thread: break a blocking read so a cancelled fetch stops at once."""
        conn = self._active
        sock = conn.sock if conn is not None else None  # the fetch thread may clear it meanwhile
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def _request(self, url: str, target: HttpTarget, job: ChunkJob) -> http.client.HTTPResponse:
        start = job.offset + job.received
        end = job.offset + job.length - 1
        headers = {"Accept-Encoding": "identity", **dict(target.headers)}
        if job.ranged:
            headers["Range"] = f"bytes={start}-{end}"
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        proxy = parse_proxy(target.proxy)
        if proxy is not None and parts.scheme == "http":
            path = url  # absolute-form through an HTTP proxy (https goes through a CONNECT tunnel)
            if proxy.authorization:
                headers["Proxy-Authorization"] = proxy.authorization
        for attempt in (0, 1):  # a kept-alive connection the server closed: one fresh try
            reused = (parts.scheme, parts.netloc) in self._conns
            conn = self._conn(parts.scheme, parts.netloc, target, proxy)
            started, connected = time.monotonic(), conn.sock is not None
            try:
                if not connected:
                    conn.connect()  # on its own, so that a timeout can say which phase ran out
                    connected, started = True, time.monotonic()
                conn.request("GET", path, headers=headers)
                return conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                why = self._why(exc, connected=connected, waited=time.monotonic() - started)
                self._drop(url)
                untrusted = isinstance(exc, ssl.SSLCertVerificationError)  # retrying will not help
                if untrusted:
                    why += f" (CA bundle: {target.ca_setting}={target.ca_file or '<system default>'})"
                timed_out = "timeout)" in why
                if attempt or not reused or timed_out or untrusted or self._stop.is_set():
                    raise SourceError(f"{_redact(url)}: {why}", permanent=untrusted) from exc
        raise AssertionError("unreachable")

    def _check(
        self,
        url: str,
        resp: http.client.HTTPResponse,
        job: ChunkJob,
        etag: str | None,
        *,
        redirected: bool = False,
    ) -> None:
        status = resp.status
        if status >= 300:
            small = resp.length is not None and resp.length <= 4096  # read whole: keep the connection
            body = (resp.read() if small else resp.read(512)).decode("utf-8", "replace")
            body = body.strip().replace("\n", " ")
            detail = f"{_redact(url)}: origin answered HTTP {status}" + (f" ({body[:200]})" if body else "")
            # A 403 at the end of a redirect is a signed URL that expired: the next try follows
            # the redirect afresh (a new URL) and keeps what this chunk already staged.
            expired = redirected and status in (401, 403, 410)
            raise SourceError(detail, permanent=status in PERMANENT_STATUSES and not expired)
        got = resp.getheader("ETag")
        if etag and got and got.strip('"') != etag.strip('"'):
            raise SourceError(
                f"{_redact(url)}: object changed at the source (ETag {got} != {etag})", permanent=True
            )
        start = job.offset + job.received
        if status == 206:
            expect = f"bytes {start}-{job.offset + job.length - 1}/"
            if not (resp.getheader("Content-Range") or "").startswith(expect):
                raise SourceError(f"{_redact(url)}: wrong Content-Range from the origin", permanent=False)
        elif not job.ranged:
            job.restart()  # a whole body from byte 0: start the (single-piece) file over
        elif start != 0 or job.length != job.file_size:
            raise SourceError(f"{_redact(url)}: the origin ignored the Range header", permanent=True)

    def _stream(self, resp: http.client.HTTPResponse, job: ChunkJob, on_bytes: Callable[[int], None]) -> None:
        conn = self._active
        sock = conn.sock if isinstance(conn, _Conn) and not resp.will_close else None
        if sock is None or resp.length != job.length - job.received:
            self._stream_buffered(resp, job, on_bytes)
            return
        # Body bytes http.client already buffered while parsing the headers come first.
        head = resp.fp.peek(1)[: job.length - job.received]
        if head:
            n = len(head)
            self._buf[:n] = resp.fp.read(n)
            self._land(job, n, on_bytes)
        buf = self._buf
        while job.received < job.length:
            if self._stop.is_set():
                raise Stopped()
            want = min(len(buf), job.length - job.received)
            n = sock.recv_into(buf[:want], want, socket.MSG_WAITALL)
            if n <= 0:
                raise http.client.IncompleteRead(b"", job.length - job.received)
            self._land(job, n, on_bytes)
        resp.close()  # the body was read past http.client: mark the response done, keep the socket
        self._active = None

    def _stream_buffered(
        self, resp: http.client.HTTPResponse, job: ChunkJob, on_bytes: Callable[[int], None]
    ) -> None:
        """The general path (TLS, chunked, Connection: close): http.client reads the body."""
        buf = self._buf
        while job.received < job.length:
            if self._stop.is_set():
                raise Stopped()
            want = min(len(buf), job.length - job.received)
            n = resp.readinto(buf[:want])
            if n <= 0:
                raise http.client.IncompleteRead(b"", job.length - job.received)
            self._land(job, n, on_bytes)
        if resp.length:  # more body than asked for: do not reuse this connection
            resp.close()
        self._active = None

    def _land(self, job: ChunkJob, n: int, on_bytes: Callable[[int], None]) -> None:
        """Write the first ``n`` bytes of the buffer at the job's position, hash them, count them."""
        view = self._buf[:n]
        pos = job.offset + job.received
        written = 0
        try:
            while written < n:
                written += os.pwrite(job.fd, view[written:], pos + written)
        except OSError as exc:
            raise LocalWriteError(exc.errno, exc.strerror) from exc
        job.hasher.update(view)
        job.received += n
        on_bytes(n)

    def _conn(
        self, scheme: str, netloc: str, target: HttpTarget, proxy: Proxy | None
    ) -> http.client.HTTPConnection:
        conn = self._conns.get((scheme, netloc))
        if conn is None:
            via = proxy.netloc if proxy is not None else netloc
            if scheme == "https":
                ctx = tls_context(target.ca_file)
                conn = _TlsConn(via, timeout=self._connect_timeout, context=ctx)
                if proxy is not None:  # TLS to the origin inside a CONNECT tunnel
                    auth = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
                    conn.set_tunnel(netloc, headers=auth)
            else:
                conn = _Conn(via, timeout=self._connect_timeout)
            conn.read_timeout = self._timeout
            self._conns[(scheme, netloc)] = conn
        self._active = conn
        return conn

    def _why(self, exc: BaseException, *, connected: bool, waited: float = 0.0) -> str:
        """One line for a failed request; timeouts say which one ran out. A kernel read timeout on
        a blocking socket surfaces as EAGAIN (``BlockingIOError``) in a body read, and as an empty
        status line (``RemoteDisconnected``) while http.client reads the headers."""
        silent = isinstance(exc, http.client.RemoteDisconnected) and waited >= 0.9 * self._timeout
        if isinstance(exc, (TimeoutError, BlockingIOError)) or silent:
            if not connected:
                return f"no connection within {self._connect_timeout:g}s (connect timeout)"
            return f"no answer within {self._timeout:g}s (read timeout)"
        return f"{exc.__class__.__name__}: {exc}"

    def _drop(self, url: str) -> None:
        parts = urlsplit(url)
        conn = self._conns.pop((parts.scheme, parts.netloc), None)
        if conn is not None:
            conn.close()
        self._active = None


def _redirected(first: HttpTarget, url: str) -> HttpTarget:
    """The target after a redirect: to another host, without the first host's credentials."""
    if urlsplit(url).netloc == urlsplit(first.url).netloc:
        return first
    headers = tuple((k, v) for k, v in first.headers if k.lower() not in ("authorization", "cookie"))
    return replace(first, url=url, headers=headers)


def _redact(url: str) -> str:
    """A URL for messages: presigned query strings carry credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
