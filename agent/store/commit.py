"""Commit a finished staging directory into ``models/<id>``, and the pins given before a commit.

Commit order (each step durable before the next, so ``recovery`` can finish or undo it):
check every file's size and chunk digests, fdatasync every file and fsync every directory,
write the record (tmp + fsync + rename), rename ``staging/<id>/files`` to ``models/<id>``,
fsync ``models/``, then drop the pending pins and the staging leftovers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from agent.store import checksums
from agent.store.durable import fsync_dir, fsync_tree, save_record, write_json_atomic
from agent.store.files import RemoteFile, model_etag, revision_of
from agent.store.staging import ChunkKey, Staging
from agent.store.trash import to_trash
from locality.digests import chunk_count, file_digest
from locality.identity import ModelRef
from locality.records import FileRecord, Layout, ModelRecord


class Incomplete(Exception):
    """A staged file lacks bytes or chunk digests: nothing was committed."""


class OriginMismatch(Incomplete):
    """A staged file's bytes do not match the checksum its origin gave: nothing was committed."""


def commit_staging(
    layout: Layout,
    ref: ModelRef,
    files: Sequence[RemoteFile],
    done: dict[ChunkKey, str],
    staging: Staging,
    *,
    chunk_bytes: int,
    now: float,
) -> ModelRecord:
    """Make ``staging`` the committed model ``ref.id`` and return its record."""
    records = prepare_commit(ref, files, done, staging, chunk_bytes=chunk_bytes)
    record = finish_commit(layout, ref, files, records, staging, now=now)
    staging.remove()
    return record


def prepare_commit(
    ref: ModelRef,
    files: Sequence[RemoteFile],
    done: dict[ChunkKey, str],
    staging: Staging,
    *,
    chunk_bytes: int,
) -> list[FileRecord]:
    """Check every staged file's size and digests, make them durable; the slow half of a commit."""
    records = []
    for f in files:
        st = os.stat(staging.path(f.path))
        digests = tuple(done.get((f.path, i), "") for i in range(chunk_count(f.size, chunk_bytes)))
        if st.st_size != f.size or not all(digests):
            raise Incomplete(f"{ref.uri}: {f.path} is incomplete ({st.st_size} of {f.size} bytes)")
        records.append(
            FileRecord(
                f.path,
                f.size,
                file_digest(digests),
                chunk_bytes,
                digests,
                f.etag,
                mtime_ns=st.st_mtime_ns,
                origin_checksum=checksums.recorded(f.checksum),
                version=f.version,
            )
        )
    wrong = checksums.mismatches(((f.path, f.size, f.checksum) for f in files), staging.path)
    if wrong:
        raise OriginMismatch(f"{ref.uri}: {'; '.join(wrong[:3])}")
    fsync_tree(staging.files_dir)
    return records


def finish_commit(
    layout: Layout,
    ref: ModelRef,
    files: Sequence[RemoteFile],
    records: list[FileRecord],
    staging: Staging,
    *,
    now: float,
    dir_name: str | None = None,
    pins: frozenset[str] = frozenset(),
) -> ModelRecord:
    """Write the record, rename the files into ``models/<dir_name or id>``: the short half, run
    under the cache's lock (it merges the pending pins, which a pin arriving meanwhile would change).
    Writing the record is the switch when it replaces an older revision's (``agent.switch``)."""
    dir_name = dir_name or ref.id
    record = ModelRecord(
        id=ref.id,
        uri=ref.uri,
        label=ref.label_key,
        files=tuple(records),
        total_bytes=sum(f.size for f in files),
        etag=model_etag(list(files)),
        fetched_at=now,
        last_used=now,
        pins=frozenset(pending_pins(layout, ref.id)) | pins,
        revision=revision_of(files),
        dir=None if dir_name == ref.id else dir_name,
    )
    save_record(layout, record)
    target = layout.models / dir_name
    if target.exists():  # debris of an unrecorded dir (the caller picked a name no record has)
        to_trash(layout, target)
    os.rename(staging.files_dir, target)
    fsync_dir(layout.models)
    layout.pending_pins(ref.id).unlink(missing_ok=True)
    return record


def pending_pins(layout: Layout, model_id: str) -> list[str]:
    """Pins given to a model before it was committed (``records/<id>.pins.json``)."""
    try:
        data = json.loads(layout.pending_pins(model_id).read_text())
    except (OSError, ValueError):
        return []
    return [str(p) for p in data] if isinstance(data, list) else []


def set_pending_pins(layout: Layout, model_id: str, pins: set[str]) -> None:
    path = layout.pending_pins(model_id)
    if pins:
        write_json_atomic(path, sorted(pins))
    else:
        path.unlink(missing_ok=True)


def allocated_bytes(root: Path) -> int:
    """Bytes already allocated to staged files (they count as free room for this same model)."""
    if not root.exists():
        return 0
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())
