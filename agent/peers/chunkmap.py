"""A peer's chunk map of one model revision: which verified chunks it can serve (pure data + checks).

A map names the revision, the chunk size and, per file, what the origin said the file is (size,
ETag, version, checksum) and the xxh3_128 of each chunk the peer holds verified. A peer's chunk
counts for a fetch only when the revision and chunk size match and its file entry is the same
file as ours (same size, ETag, version and origin checksum): ``usable_chunks`` applies that rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.peers.plan import ChunkId

MAX_FILES = 100_000
_HEX32 = re.compile(r"[0-9a-f]{32}")
MAX_CHUNKS = 10_000_000


class BadMap(ValueError):
    """A chunk map that is not the documented JSON."""


@dataclass(frozen=True, slots=True)
class FileId:
    """What the origin said one file is; two peers' chunks mix only when these are equal."""

    size: int
    etag: str | None = None
    version: str | None = None
    checksum: str | None = None


@dataclass(frozen=True)
class ChunkMap:
    model_id: str
    revision: str
    chunk_bytes: int
    state: str  # "fetching" or "ready"
    files: Mapping[str, FileId]
    chunks: Mapping[ChunkId, str]  # verified chunks -> xxh3_128
    origin_inflight: frozenset[ChunkId] = field(default_factory=frozenset)

    def as_json(self) -> dict[str, Any]:
        by_file: dict[str, dict[str, str]] = {}
        for (path, index), digest in self.chunks.items():
            by_file.setdefault(path, {})[str(index)] = digest
        return {
            "id": self.model_id,
            "revision": self.revision,
            "chunk_bytes": self.chunk_bytes,
            "state": self.state,
            "files": {
                path: {
                    "size": f.size,
                    "etag": f.etag,
                    "version": f.version,
                    "checksum": f.checksum,
                    "chunks": by_file.get(path, {}),
                }
                for path, f in self.files.items()
            },
            "origin_inflight": sorted([p, i] for p, i in self.origin_inflight),
        }


def map_from_json(data: object) -> ChunkMap:
    """Parse a peer's answer; ``BadMap`` when it is not a chunk map."""
    try:
        _need(isinstance(data, dict), "not an object")
        assert isinstance(data, dict)  # for mypy; _need raised otherwise
        files_raw = data["files"]
        _need(isinstance(files_raw, dict) and len(files_raw) <= MAX_FILES, "files")
        files: dict[str, FileId] = {}
        chunks: dict[ChunkId, str] = {}
        for path, entry in files_raw.items():
            files[str(path)] = FileId(
                int(entry["size"]), _opt(entry, "etag"), _opt(entry, "version"), _opt(entry, "checksum")
            )
            for index, digest in dict(entry.get("chunks") or {}).items():
                chunks[(str(path), int(index))] = _digest(digest)
        _need(len(chunks) <= MAX_CHUNKS, "too many chunks")
        inflight = frozenset((str(p), int(i)) for p, i in data.get("origin_inflight") or [])
        state = str(data["state"])
        _need(state in ("fetching", "ready"), "state")
        return ChunkMap(
            str(data["id"]), str(data["revision"]), int(data["chunk_bytes"]), state, files, chunks, inflight
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadMap(f"not a chunk map: {type(exc).__name__}: {exc}"[:200]) from exc


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def _opt(entry: Mapping[str, Any], key: str) -> str | None:
    value = entry.get(key)
    return None if value is None else str(value)


def _digest(value: object) -> str:
    text = str(value)
    if not _HEX32.fullmatch(text):
        raise ValueError("a chunk digest is 32 lower-case hex digits")
    return text


def usable_chunks(
    theirs: ChunkMap, revision: str, chunk_bytes: int, ours: Mapping[str, FileId]
) -> dict[ChunkId, str]:
    """The chunks of ``theirs`` we may take: same revision and chunk size, same file at the origin."""
    if theirs.revision != revision or theirs.chunk_bytes != chunk_bytes:
        return {}
    same = {path for path, f in ours.items() if theirs.files.get(path) == f}
    return {key: d for key, d in theirs.chunks.items() if key[0] in same}


def expected_digest(
    chunk: ChunkId, sender: str, advertised: Mapping[str, Mapping[ChunkId, str]]
) -> str | None:
    """The digest a chunk from ``sender`` must have, taken from another peer when one advertises it.

    ``advertised``: peer -> its usable chunks. Peers that disagree about a chunk make it contested
    (None: take it from the origin). Only when the sender is the sole holder (the first hop after
    the origin) does its own digest stand; the file's origin checksum is then the check (docs/peers.md).
    """
    digests = {name: chunks[chunk] for name, chunks in advertised.items() if chunk in chunks}
    if len(set(digests.values())) != 1:
        return None
    return next(iter(digests.values())) if sender in digests else None


def file_ids(rows: Iterable[tuple[str, int, str | None, str | None, str | None]]) -> dict[str, FileId]:
    """``(path, size, etag, version, checksum)`` rows -> the per-file identity a map carries."""
    return {path: FileId(size, etag, version, checksum) for path, size, etag, version, checksum in rows}
