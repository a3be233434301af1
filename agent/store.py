"""The cache on disk: layout, model records (atomic JSON), chunk digests, verification, fsync helpers.

Layout under the cache root::

    models/<id>/...        committed models, files exactly as at the source, nothing else
    records/<id>.json      one metadata record per committed model (tmp + fsync + rename)
    records/<id>.pins.json pins given before the model was committed (merged at commit)
    staging/<id>/          a fetch in progress: files/ (renamed to models/<id>), manifest, journal
    trash/                 models being deleted (renamed here first, so removal is atomic)

File digest (``DIGEST_SCHEME``): each file is hashed in fixed-size chunks of ``chunk_bytes``;
``chunk_digests[i] = xxh3_128(bytes[i*chunk_bytes : (i+1)*chunk_bytes])`` and the file's
``xxh3_128 = xxh3_128(chunk_digests[0] || chunk_digests[1] || ...)`` over the 16-byte digests.
It is not the plain whole-file xxh3_128 (that would need in-order hashing or a read-back).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from agent.identity import READY

log = logging.getLogger(__name__)

DIGEST_SCHEME = "xxh3_128-of-chunk-xxh3_128"
_READ_BYTES = 8 << 20


@dataclass(frozen=True)
class FileRecord:
    """One committed file: path relative to the model dir, size, digests, source ETag."""

    path: str
    size: int
    xxh3_128: str
    chunk_bytes: int
    chunk_digests: tuple[str, ...]
    etag: str | None


@dataclass(frozen=True)
class ModelRecord:
    """The metadata record of one committed model."""

    id: str
    uri: str
    label: str
    files: tuple[FileRecord, ...]
    total_bytes: int
    etag: str | None
    fetched_at: float
    last_used: float
    pins: frozenset[str]


@dataclass(frozen=True)
class Layout:
    """Paths under one cache root."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def records(self) -> Path:
        return self.root / "records"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def trash(self) -> Path:
        return self.root / "trash"

    def model(self, model_id: str) -> Path:
        return self.models / model_id

    def record(self, model_id: str) -> Path:
        return self.records / f"{model_id}.json"

    def pending_pins(self, model_id: str) -> Path:
        return self.records / f"{model_id}.pins.json"

    def stage(self, model_id: str) -> Path:
        return self.staging / model_id

    def create(self) -> Layout:
        for path in (self.models, self.records, self.staging, self.trash):
            path.mkdir(parents=True, exist_ok=True)
        return self


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


def verify_files(model_dir: Path, record: ModelRecord) -> list[str]:
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
            for i, want in enumerate(f.chunk_digests):
                offset = i * f.chunk_bytes
                got = hash_chunk(fd, offset, min(f.chunk_bytes, f.size - offset), buf)
                if got != want:
                    problems.append(
                        f"{f.path}: xxh3_128 mismatch in bytes {offset}..{offset + f.chunk_bytes}"
                    )
                    break
        finally:
            os.close(fd)
    if model_dir.is_dir():
        for path in sorted(p for p in model_dir.rglob("*") if not p.is_dir()):
            rel = path.relative_to(model_dir).as_posix()
            if rel not in expected:
                problems.append(f"{rel}: not part of the model")
    return problems


def verify_model_dir(model_dir: Path) -> list[str] | None:
    """For the serving process: re-hash a committed ``<root>/models/<id>``; None if not in a cache."""
    model_dir = Path(model_dir).resolve()
    layout = Layout(model_dir.parent.parent)
    if model_dir.parent.name != "models":
        return None
    record = load_record(layout, model_dir.name)
    if record is None:
        return None
    return verify_files(model_dir, record)


def record_view(record: ModelRecord, path: Path) -> dict[str, Any]:
    """The REST / ``ls --json`` object of a committed model."""
    return {
        "id": record.id,
        "uri": record.uri,
        "label": record.label,
        "state": READY,
        "bytes_total": record.total_bytes,
        "bytes_done": record.total_bytes,
        "path": str(path),
        "error": None,
        "pins": sorted(record.pins),
        "fetched_at": record.fetched_at,
        "last_used": record.last_used,
    }


def record_to_json(record: ModelRecord) -> dict[str, Any]:
    return {
        "version": 1,
        "digest_scheme": DIGEST_SCHEME,
        "id": record.id,
        "uri": record.uri,
        "label": record.label,
        "total_bytes": record.total_bytes,
        "etag": record.etag,
        "fetched_at": record.fetched_at,
        "last_used": record.last_used,
        "pins": sorted(record.pins),
        "files": [
            {
                "path": f.path,
                "size": f.size,
                "xxh3_128": f.xxh3_128,
                "chunk_bytes": f.chunk_bytes,
                "chunk_digests": list(f.chunk_digests),
                "etag": f.etag,
            }
            for f in record.files
        ],
    }


def record_from_json(data: dict[str, Any]) -> ModelRecord:
    """Parse a record; raise ``ValueError`` (or ``KeyError``/``TypeError``) when it is not one."""
    if data.get("digest_scheme") != DIGEST_SCHEME:
        raise ValueError(f"unknown digest scheme {data.get('digest_scheme')!r}")
    files = tuple(
        FileRecord(
            path=str(f["path"]),
            size=int(f["size"]),
            xxh3_128=str(f["xxh3_128"]),
            chunk_bytes=int(f["chunk_bytes"]),
            chunk_digests=tuple(str(d) for d in f["chunk_digests"]),
            etag=f.get("etag"),
        )
        for f in data["files"]
    )
    return ModelRecord(
        id=str(data["id"]),
        uri=str(data["uri"]),
        label=str(data["label"]),
        files=files,
        total_bytes=int(data["total_bytes"]),
        etag=data.get("etag"),
        fetched_at=float(data["fetched_at"]),
        last_used=float(data["last_used"]),
        pins=frozenset(str(p) for p in data.get("pins", [])),
    )


def load_record(layout: Layout, model_id: str) -> ModelRecord | None:
    """The record of ``model_id``, or None when absent or unreadable (logged)."""
    path = layout.record(model_id)
    try:
        record = record_from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable record %s: %s", path, exc)
        return None
    return record if record.id == model_id else None


def save_record(layout: Layout, record: ModelRecord) -> None:
    write_json_atomic(layout.record(record.id), record_to_json(record))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader (or a crash) sees the old or the new file, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as out:
        json.dump(data, out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fdatasync every file below ``root`` and fsync every directory (deepest first)."""
    dirs = [root]
    for path in root.rglob("*"):
        if path.is_dir():
            dirs.append(path)
        else:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
    for path in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(path)
