"""What the one-pass loader reads and checks: shard headers, the cache record's chunks, hashed reads.

No torch here: ``serving.loader`` owns the buffers and the tensors; this module decides which
byte ranges to read, reads them with large ``preadv`` calls into whatever buffer it is handed,
hashes each range as it arrives (the cache's scheme, ``locality.digests``) and fails naming the
file and byte range when a chunk differs from the agent's record. The files that are not
weights (config, tokenizer: small) are hashed against the record here too, so a start checks
every file of the model once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import xxhash

from locality.recordcheck import verify_files
from locality.records import FileRecord, ModelRecord, record_at
from serving.integrity import Header, IntegrityError, read_header, record_mismatch, weight_files
from serving.reads import Source

PLAIN_SEGMENT = 32 * 2**20  # read unit of a file that has no record (no chunks to follow)


@dataclass(frozen=True, slots=True)
class Shard:
    """One weight file to read: its validated header and, for a cached model, its record."""

    header: Header
    record: FileRecord | None  # None: not in a node cache, read without a digest check


@dataclass(frozen=True, slots=True)
class Segment:
    """A byte range of one shard read by one worker; ``digest`` is the record's, if any."""

    shard: int  # index into ``Plan.shards``
    offset: int
    length: int
    chunk: int | None  # the record's chunk index, when the range is one
    digest: str | None


@dataclass(frozen=True, slots=True)
class Plan:
    model_dir: Path
    shards: tuple[Shard, ...]
    record: ModelRecord | None  # the node cache's record; None when the directory is not in one

    @property
    def total_bytes(self) -> int:
        return sum(s.header.size for s in self.shards)


def cache_record(model_dir: Path) -> ModelRecord | None:
    """The agent's record of a committed ``<root>/models/<id>``; None when not in a node cache."""
    return record_at(model_dir)


def plan(model_dir: Path, *, check: bool) -> Plan:
    """Validate headers (always) and match the shards with the record (when ``check`` and cached).

    Raises ``IntegrityError`` for a bad header, a shard the record does not know, or a size that
    differs from the record's (a truncated file is named here, before any data is read).
    """
    try:
        headers = [read_header(path) for path in weight_files(model_dir)]
    except OSError as exc:
        raise IntegrityError(f"{exc.filename or model_dir}: cannot read ({exc.strerror or exc})") from exc
    record = cache_record(model_dir) if check else None
    if record is None:
        return Plan(model_dir, tuple(Shard(h, None) for h in headers), None)
    by_path = {f.path: f for f in record.files}
    shards = []
    for header in headers:
        rel = header.path.relative_to(model_dir).as_posix()
        file = by_path.get(rel)
        if file is None:
            raise IntegrityError(f"{header.path}: not part of the node cache record of {model_dir}")
        if file.size != header.size:
            raise IntegrityError(
                f"{header.path}: {header.size} bytes but the node cache record says {file.size} (truncated?)"
            )
        shards.append(Shard(header, file))
    return Plan(model_dir, tuple(shards), record)


def segments(plan: Plan) -> list[Segment]:
    """The record's chunks of each shard (each hashed on its own), else plain fixed-size ranges."""
    out = []
    for i, shard in enumerate(plan.shards):
        size, rec = shard.header.size, shard.record
        step = rec.chunk_bytes if rec is not None else PLAIN_SEGMENT
        for k, offset in enumerate(range(0, size, step)):
            digest = rec.chunk_digests[k] if rec is not None else None
            out.append(Segment(i, offset, min(step, size - offset), k if rec else None, digest))
    return out


Sink = Callable[[int, int], memoryview]  # (offset in the file, length) -> where to read it
Filled = Callable[[int, int, memoryview], None]  # a block has been read (and hashed) into the view


def read_segment(
    source: Source,
    seg: Segment,
    *,
    sink: Sink,
    filled: Filled,
    block: int,
    stop: threading.Event,
) -> None:
    """Read ``seg`` in blocks of at most ``block`` bytes, hashing as it goes; check the digest.

    ``preadv`` and xxh3 release the GIL, so several workers read and hash in parallel; each
    worker hashes what it read while its bytes are still in the CPU cache.
    """
    h = xxhash.xxh3_128() if seg.digest is not None else None
    done = 0
    while done < seg.length:
        if stop.is_set():
            return
        n = min(block, seg.length - done)
        view = sink(seg.offset + done, n)
        source.fill(view, n, seg.offset + done)
        if h is not None:
            h.update(view[:n])
        filled(seg.offset + done, n, view)
        done += n
    if h is not None and h.hexdigest() != seg.digest:
        raise chunk_mismatch(source.path, seg)


def chunk_mismatch(path: Path, seg: Segment) -> IntegrityError:
    """The error for a chunk whose digest differs from the record's, naming file and byte range."""
    return IntegrityError(
        f"{path}: chunk {seg.chunk} (bytes {seg.offset}..{seg.offset + seg.length}) does not match"
        " the node cache record"
    )


def check_other_files(plan: Plan) -> None:
    """Hash the record's non-weight files; refuse missing, changed or unknown files."""
    if plan.record is None:
        return
    weights = {s.header.path.relative_to(plan.model_dir).as_posix() for s in plan.shards}
    problems = verify_files(plan.model_dir, plan.record, skip=weights)
    if problems:
        raise record_mismatch(plan.model_dir, problems)
