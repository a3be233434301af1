"""HTTP(S) source: one file per URI; aiohttp asks the origin its size, ETag and Range support."""

from __future__ import annotations

import aiohttp

from agent.fetch.sources.base import PERMANENT_STATUSES, HttpTarget, SourceError, checked_files
from agent.fetch.sources.network import environ_proxy
from agent.fetch.sources.timeouts import Timeouts
from agent.store import checksums
from agent.store.files import RemoteFile
from locality.identity import ModelRef


class HttpSource:
    """``http(s)://host/path``: a single file, saved under its last path segment."""

    def __init__(self, ref: ModelRef, timeouts: Timeouts | None = None) -> None:
        self.uri = ref.uri
        t = timeouts or Timeouts()
        self._timeout = aiohttp.ClientTimeout(sock_connect=t.connect, sock_read=t.read)
        self._url = ref.uri  # replaced by the final URL after redirects
        self._name = ref.path.split("?", 1)[0].rsplit("/", 1)[-1]

    async def list_files(self) -> list[RemoteFile]:
        try:
            async with aiohttp.ClientSession(
                timeout=self._timeout, auto_decompress=False, trust_env=True
            ) as session:
                file = await self._probe(session)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise SourceError(f"{self.uri}: TLS certificate not trusted: {exc}", permanent=True) from exc
        except TimeoutError as exc:  # aiohttp's connect and read timeouts are TimeoutErrors too
            raise SourceError(
                f"{self.uri}: no answer asking for the size (connect timeout "
                f"{self._timeout.sock_connect:g}s, read timeout {self._timeout.sock_read:g}s)",
                permanent=False,
            ) from exc
        except aiohttp.ClientError as exc:
            raise SourceError(f"{self.uri}: {exc.__class__.__name__}: {exc}", permanent=False) from exc
        return checked_files(self.uri, [file])

    def target(self, file: RemoteFile) -> HttpTarget:
        return HttpTarget(url=self._url, proxy=environ_proxy(self._url))

    async def close(self) -> None:
        return None

    async def _probe(self, session: aiohttp.ClientSession) -> RemoteFile:
        """HEAD for size/ETag/Accept-Ranges; if HEAD is refused, a ``Range: bytes=0-0`` GET asks instead."""
        headers = {"Accept-Encoding": "identity"}
        async with session.head(self._url, allow_redirects=True, headers=headers) as resp:
            status, final, got = resp.status, str(resp.url), resp.headers
        if status in (403, 405, 501):  # 403: a presigned URL signed for GET only
            headers["Range"] = "bytes=0-0"
            async with session.get(self._url, allow_redirects=True, headers=headers) as resp:
                status, final, got = resp.status, str(resp.url), resp.headers
                resp.release()
        _check_status(self.uri, status)
        self._url = final
        size = _size_of(got.get("Content-Range"), got.get("Content-Length"), status)
        if size is None:
            raise SourceError(f"{self.uri}: the origin does not report a size", permanent=True)
        ranges = status == 206 or got.get("Accept-Ranges", "").lower() == "bytes"
        return RemoteFile(
            path=self._name,
            size=size,
            etag=got.get("ETag"),
            key=final,
            ranges=ranges,
            checksum=checksums.from_http_headers(got.get("Repr-Digest"), got.get("Digest")),
            version=got.get("Last-Modified"),
        )


def _check_status(uri: str, status: int) -> None:
    if status in PERMANENT_STATUSES:
        raise SourceError(f"{uri}: origin answered HTTP {status}", permanent=True)
    if status >= 300:
        raise SourceError(f"{uri}: origin answered HTTP {status}", permanent=status < 500 and status != 429)


def _size_of(content_range: str | None, content_length: str | None, status: int) -> int | None:
    """Total size: ``bytes 0-0/TOTAL`` of a 206, else Content-Length of a 200 HEAD."""
    if status == 206 and content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    if content_length and content_length.strip().isdigit():
        return int(content_length)
    return None
