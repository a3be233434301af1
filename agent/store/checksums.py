"""Origin checksums: what the origin vouches a file's bytes are, parsed from its headers and checked
against the staged file before commit.

A checksum is written ``<algorithm>:<lower-case hex>``: ``sha256``, ``sha512``, ``sha1``,
``git-sha1`` (a git blob id: ``sha1("blob <size>\\0" + bytes)``, what the Hub gives for non-LFS
files), ``crc32`` (zlib), and ``crc32c`` / ``crc64nvme`` (S3's additional checksums, computed by
``awscrt``, the library botocore uses for them). The per-chunk xxh3_128 digests say the bytes did
not change since they arrived; this says they are the bytes the origin meant.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

NONE = "none"
_READ = 8 << 20


class _Running(Protocol):
    def update(self, data: bytes | memoryview) -> None: ...

    def hexdigest(self) -> str: ...


class _Crc:
    """A running CRC with a hashlib-like face (zlib's crc32, awscrt's crc32c and crc64nvme)."""

    def __init__(self, step: Callable[[bytes | memoryview, int], int], width: int) -> None:
        self._step, self._width, self._value = step, width, 0

    def update(self, data: bytes | memoryview) -> None:
        self._value = self._step(data, self._value)

    def hexdigest(self) -> str:
        return f"{self._value:0{self._width // 4}x}"


def _crt(name: str) -> Callable[[bytes | memoryview, int], int] | None:
    try:
        from awscrt import checksums  # type: ignore[import-untyped]
    except ImportError:
        return None
    fn: Callable[[bytes | memoryview, int], int] = getattr(checksums, name)
    return fn


def _hasher(algorithm: str, size: int) -> _Running | None:
    """A fresh running hash for ``algorithm``, or None when this build cannot compute it."""
    if algorithm in ("sha256", "sha512", "sha1"):
        return hashlib.new(algorithm)
    if algorithm == "git-sha1":
        h = hashlib.sha1()
        h.update(f"blob {size}\0".encode())
        return h
    if algorithm == "crc32":
        return _Crc(zlib.crc32, 32)
    if algorithm in ("crc32c", "crc64nvme"):
        step = _crt(algorithm)
        return _Crc(step, 32 if algorithm == "crc32c" else 64) if step else None
    return None


def supported(checksum: str | None) -> bool:
    """True when ``checksum`` names an algorithm this build can check."""
    if not checksum or ":" not in checksum:
        return False
    return _hasher(checksum.split(":", 1)[0].lower(), 0) is not None


def from_base64(algorithm: str, value: str) -> str | None:
    """``algorithm:hex`` from a base64 digest (S3's ``x-amz-checksum-*``, RFC 9530's ``:b64:``)."""
    try:
        raw = base64.b64decode(value.strip().strip(":"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return f"{algorithm}:{raw.hex()}" if raw else None


_HTTP_ALGORITHMS = {"sha-256": "sha256", "sha-512": "sha512", "sha": "sha1"}


def from_http_headers(repr_digest: str | None, digest: str | None) -> str | None:
    """The strongest usable digest from RFC 9530 ``Repr-Digest`` or RFC 3230 ``Digest``.

    ``Repr-Digest: sha-256=:<b64>:, sha-512=:<b64>:`` and ``Digest: SHA-256=<b64>``; md5 and
    unknown algorithms are ignored (md5 vouches for nothing against a hostile origin).
    """
    found: dict[str, str] = {}
    for header in (repr_digest, digest):
        for item in (header or "").split(","):
            name, sep, value = item.strip().partition("=")
            algorithm = _HTTP_ALGORITHMS.get(name.strip().lower())
            if sep and algorithm and algorithm not in found:
                parsed = from_base64(algorithm, value)
                if parsed:
                    found[algorithm] = parsed
    for algorithm in ("sha512", "sha256", "sha1"):
        if algorithm in found:
            return found[algorithm]
    return None


def file_checksum(path: Path, algorithm: str, size: int) -> str | None:
    """``algorithm:hex`` of the file at ``path`` (None when this build cannot compute it)."""
    h = _hasher(algorithm, size)
    if h is None:
        return None
    buf = memoryview(bytearray(_READ))
    fd = os.open(path, os.O_RDONLY)
    try:
        while n := os.readv(fd, [buf]):
            h.update(buf[:n])
    finally:
        os.close(fd)
    return f"{algorithm}:{h.hexdigest()}"


def mismatches(
    files: Iterable[tuple[str, int, str | None]], path_of: Callable[[str], Path], *, workers: int = 4
) -> list[str]:
    """Check each ``(path, size, checksum)`` against its staged file; one message per mismatch.

    Files run in parallel threads (hashlib, zlib and awscrt release the GIL on large buffers).
    """
    todo = [(p, s, c) for p, s, c in files if supported(c)]

    def check(item: tuple[str, int, str | None]) -> str | None:
        rel, size, want = item
        assert want is not None
        want = want.lower()
        got = file_checksum(path_of(rel), want.split(":", 1)[0], size)
        if got == want:
            return None
        return f"{rel}: origin checksum mismatch (origin says {want}, the bytes are {got})"

    if not todo:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
        return [m for m in pool.map(check, todo) if m]


def recorded(checksum: str | None) -> str:
    """What the record says: the checked checksum, or ``none`` (no usable one from the origin)."""
    return checksum.lower() if supported(checksum) and checksum else NONE
