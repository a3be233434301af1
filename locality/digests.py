"""The cache's digest scheme (pure): chunk counts, the file digest over chunk digests, mismatch ranges.

File digest (``DIGEST_SCHEME``): each file is hashed in fixed-size chunks of ``chunk_bytes``;
``chunk_digests[i] = xxh3_128(bytes[i*chunk_bytes : (i+1)*chunk_bytes])`` and the file's
``xxh3_128 = xxh3_128(chunk_digests[0] || chunk_digests[1] || ...)`` over the 16-byte digests.
It is not the plain whole-file xxh3_128 (that would need in-order hashing or a read-back).
Reading files to hash them is ``locality.recordcheck``'s.
"""

from __future__ import annotations

import xxhash

DIGEST_SCHEME = "xxh3_128-of-chunk-xxh3_128"


def chunk_count(size: int, chunk_bytes: int) -> int:
    """Chunks of a file: ``ceil(size / chunk_bytes)``; an empty file has none."""
    return -(-size // chunk_bytes)


def chunk_span(index: int, size: int, chunk_bytes: int) -> tuple[int, int]:
    """``(offset, length)`` of chunk ``index`` of a ``size``-byte file (the last one may be short)."""
    offset = index * chunk_bytes
    return offset, min(chunk_bytes, size - offset)


def file_digest(chunk_digests: tuple[str, ...] | list[str]) -> str:
    """``xxh3_128`` over the concatenated 16-byte chunk digests (see the module docstring)."""
    h = xxhash.xxh3_128()
    for digest in chunk_digests:
        h.update(bytes.fromhex(digest))
    return h.hexdigest()


def merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent byte ranges joined: ``[(0, 8), (8, 16), (32, 40)] -> [(0, 16), (32, 40)]``."""
    out: list[tuple[int, int]] = []
    for start, end in ranges:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def mismatch_lines(path: str, bad: list[tuple[int, int]]) -> list[str]:
    """One problem line per run of adjacent mismatched chunks ``(start, end)`` of file ``path``."""
    runs = merged(bad)
    return [f"{path}: xxh3_128 mismatch in bytes {start}..{end} (end exclusive)" for start, end in runs]
