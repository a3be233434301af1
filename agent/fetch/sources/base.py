"""The one source interface: list a model's files, then name an HTTP target per file for ranged GETs.

Both sources hand the bytes to the same lean data path (``agent.fetch.sources.transfer``): S3 through
presigned URLs, HTTP(S) through the URL itself. So "which store" and "how to move bytes fast" are
separate concerns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.store.files import RemoteFile
from locality.identity import UnsafePath, safe_relpath

# HTTP statuses that retrying cannot fix (for HEADs and ranged GETs alike): the request or the
# credentials are wrong, the object is gone, or a range/precondition no longer fits the object.
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 412, 416, 451})


class SourceError(Exception):
    """A source failure. ``permanent`` ones (403, 404, bad key, hostile path) are not retried."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class HttpTarget:
    """Where a plain HTTP GET for one file's bytes goes (a presigned URL for S3).

    ``ca_file`` is the CA bundle to verify TLS with (None: the system's), ``proxy`` the HTTP
    proxy URL to go through (None: direct), ``ca_setting`` the setting to name when a
    certificate cannot be verified (``AWS_CA_BUNDLE`` for S3).
    """

    url: str
    headers: tuple[tuple[str, str], ...] = ()
    ca_file: str | None = None
    proxy: str | None = None
    ca_setting: str = "SSL_CERT_FILE"


class Source(Protocol):
    """A model's origin. ``target`` is synchronous and thread-safe: fetch threads call it."""

    uri: str

    async def list_files(self) -> list[RemoteFile]: ...

    def target(self, file: RemoteFile) -> HttpTarget: ...

    async def close(self) -> None: ...


class Unpacker(Protocol):
    """A source some of whose files are unpacked from archives (OCI tar layers), not ranged:
    ``unpack`` streams one archive and writes the files ``fds`` names (path -> staging fd)."""

    def archive_of(self, file: RemoteFile) -> str | None: ...

    def unpack(
        self, archive: str, fds: Mapping[str, int], stop: threading.Event, on_bytes: Callable[[int], None]
    ) -> None: ...


def archives(source: object, files: Sequence[RemoteFile]) -> dict[str, list[RemoteFile]]:
    """Archive -> the files unpacked from it; empty for a source that only ranges."""
    archive_of: Callable[[RemoteFile], str | None] | None = getattr(source, "archive_of", None)
    out: dict[str, list[RemoteFile]] = {}
    if archive_of is None:
        return out
    for f in files:
        if (archive := archive_of(f)) is not None:
            out.setdefault(archive, []).append(f)
    return out


def checked_files(uri: str, files: Iterable[RemoteFile]) -> list[RemoteFile]:
    """Refuse hostile or clashing paths (the whole model fails), sorted by path.

    Refused: what ``safe_relpath`` refuses (absolute, ``..``, NUL, backslash, ...), a path that is
    both a file and a directory (``a`` and ``a/b``), a duplicate, and an empty listing.
    """
    out = sorted(files, key=lambda f: f.path)
    if not out:
        raise SourceError(f"no objects at {uri}", permanent=True)
    seen: set[str] = set()
    for file in out:
        try:
            safe_relpath(file.path)
        except UnsafePath as exc:
            raise SourceError(f"refusing {uri}: {exc}", permanent=True) from exc
        if file.size < 0:
            raise SourceError(f"refusing {uri}: negative size for {file.path!r}", permanent=True)
        if file.path in seen:
            raise SourceError(f"refusing {uri}: duplicate path {file.path!r}", permanent=True)
        seen.add(file.path)
    dirs = {"/".join(f.path.split("/")[:i]) for f in out for i in range(1, f.path.count("/") + 1)}
    clash = sorted(seen & dirs)
    if clash:
        raise SourceError(f"refusing {uri}: {clash[0]!r} is both a file and a directory", permanent=True)
    return out
