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


def map_version(data: object) -> tuple[str | None, bool]:
    """The version token of a map answer and whether it is a delta (``(None, False)``: an agent
    that does not version its maps; the reader then polls whole maps)."""
    if not isinstance(data, dict) or not isinstance(data.get("version"), str):
        return None, False
    return data["version"], data.get("delta") is True


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
        return encode_map(self, self.chunks.items())


def encode_map(
    m: ChunkMap, chunks: Iterable[tuple[ChunkId, str]], *, version: str | None = None, delta: bool = False
) -> dict[str, Any]:
    """The JSON of ``m`` with ``chunks`` (all of its chunks, or only those added since the version
    the reader named: ``delta``, which then lists only the files those chunks are in). ``version``
    is the token a reader passes back as ``since``."""
    by_file: dict[str, dict[str, str]] = {}
    for (path, index), digest in chunks:
        by_file.setdefault(path, {})[str(index)] = digest
    paths = by_file if delta else m.files
    out: dict[str, Any] = {
        "id": m.model_id,
        "revision": m.revision,
        "chunk_bytes": m.chunk_bytes,
        "state": m.state,
        "files": {
            path: {
                "size": f.size,
                "etag": f.etag,
                "version": f.version,
                "checksum": f.checksum,
                "chunks": by_file.get(path, {}),
            }
            for path in paths
            if (f := m.files.get(path)) is not None
        },
        "origin_inflight": sorted([p, i] for p, i in m.origin_inflight),
    }
    if version is not None:
        out["version"], out["delta"] = version, delta
    return out


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
