"""The cache's digest scheme and the check of a model directory against its record.

File digest (``DIGEST_SCHEME``): each file is hashed in fixed-size chunks of ``chunk_bytes``;
``chunk_digests[i] = xxh3_128(bytes[i*chunk_bytes : (i+1)*chunk_bytes])`` and the file's
``xxh3_128 = xxh3_128(chunk_digests[0] || chunk_digests[1] || ...)`` over the 16-byte digests.
It is not the plain whole-file xxh3_128 (that would need in-order hashing or a read-back).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import xxhash

DIGEST_SCHEME = "xxh3_128-of-chunk-xxh3_128"
_READ_BYTES = 8 << 20


class ChunkedFile(Protocol):
    """What a check needs of one recorded file (``locality.records.FileRecord`` is one)."""

    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def chunk_bytes(self) -> int: ...
    @property
    def chunk_digests(self) -> tuple[str, ...]: ...


class Recorded(Protocol):
    """What a check needs of a record (``locality.records.ModelRecord`` is one)."""

    @property
    def files(self) -> Sequence[ChunkedFile]: ...


def chunk_count(size: int, chunk_bytes: int) -> int:
    """Chunks of a file: ``ceil(size / chunk_bytes)``; an empty file has none."""
    return -(-size // chunk_bytes)


def file_digest(chunk_digests: tuple[str, ...] | list[str]) -> str:
    """``xxh3_128`` over the concatenated 16-byte chunk digests (see the module docstring)."""
    h = xxhash.xxh3_128()
    for digest in chunk_digests:
        h.update(bytes.fromhex(digest))
    return h.hexdigest()


def hash_chunk(fd: int, offset: int, length: int, buf: memoryview) -> str:
    """xxh3_128 of ``length`` bytes at ``offset`` of an open file, read into ``buf``."""
    h = xxhash.xxh3_128()
    done = 0
    while done < length:
        n = os.preadv(fd, [buf[: min(len(buf), length - done)]], offset + done)
        if n <= 0:
            break  # short file: the digest will not match
        h.update(buf[:n])
        done += n
    return h.hexdigest()


def verify_files(model_dir: Path, record: Recorded) -> list[str]:
    """Re-hash every file of ``record`` under ``model_dir``; one description per mismatch."""
    problems: list[str] = []
    buf = memoryview(bytearray(_READ_BYTES))
    expected = {f.path for f in record.files}
    for f in record.files:
        path = model_dir / f.path
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            problems.append(f"{f.path}: missing ({exc.strerror})")
            continue
        try:
            size = os.fstat(fd).st_size
            if size != f.size:
                problems.append(f"{f.path}: size {size} != {f.size}")
                continue
            bad = [
                (offset, offset + length)
                for i, want in enumerate(f.chunk_digests)
                for offset, length in [(i * f.chunk_bytes, min(f.chunk_bytes, f.size - i * f.chunk_bytes))]
                if hash_chunk(fd, offset, length, buf) != want
            ]
            problems.extend(
                f"{f.path}: xxh3_128 mismatch in bytes {start}..{end} (end exclusive)"
                for start, end in _merged(bad)
            )
        finally:
            os.close(fd)
    if model_dir.is_dir():
        for path in sorted(p for p in model_dir.rglob("*") if not p.is_dir()):
            rel = path.relative_to(model_dir).as_posix()
            if rel not in expected:
                problems.append(f"{rel}: not part of the model")
    return problems


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent chunk ranges joined: ``[(0, 8), (8, 16), (32, 40)] -> [(0, 16), (32, 40)]``."""
    out: list[tuple[int, int]] = []
    for start, end in ranges:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out
