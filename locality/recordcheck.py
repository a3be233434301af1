"""Reading a model directory back against its record: the one check the agent and serving share.

``verify_files`` re-hashes the files of a record (``locality.digests``' scheme) and names what
differs; serving's one-pass loader hashes the weights as it reads them and passes them in
``skip``, so each byte is read once. ``verify_model_dir`` does the whole check for a directory
found by path (``<root>/models/<dir>``), None when it is not in a node cache.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import xxhash

from locality.digests import chunk_span, mismatch_lines
from locality.records import FileRecord, ModelRecord, record_at

_READ_BYTES = 8 << 20


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


def verify_files(model_dir: Path, record: ModelRecord, *, skip: Collection[str] = ()) -> list[str]:
    """Re-hash every file of ``record`` under ``model_dir`` except those in ``skip`` (paths the
    caller checks itself); one line per missing file, wrong size, run of bad chunks, or file
    the record does not list. ``[]``: the directory is exactly the record's."""
    problems: list[str] = []
    buf = memoryview(bytearray(_READ_BYTES))
    for f in record.files:
        if f.path not in skip:
            problems.extend(_check_file(model_dir, f, buf))
    problems.extend(unknown_files(model_dir, {f.path for f in record.files}))
    return problems


def unknown_files(model_dir: Path, known: Collection[str]) -> list[str]:
    """``<path>: not part of the model`` for every file under ``model_dir`` not in ``known``."""
    if not model_dir.is_dir():
        return []
    found = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if not p.is_dir())
    return [f"{rel}: not part of the model" for rel in found if rel not in known]


def _check_file(model_dir: Path, f: FileRecord, buf: memoryview) -> list[str]:
    try:
        fd = os.open(model_dir / f.path, os.O_RDONLY)
    except OSError as exc:
        return [f"{f.path}: missing ({exc.strerror})"]
    try:
        size = os.fstat(fd).st_size
        if size != f.size:
            return [f"{f.path}: size {size} != {f.size}"]
        spans = [chunk_span(i, f.size, f.chunk_bytes) for i in range(len(f.chunk_digests))]
        bad = [
            (offset, offset + length)
            for (offset, length), want in zip(spans, f.chunk_digests, strict=True)
            if hash_chunk(fd, offset, length, buf) != want
        ]
        return mismatch_lines(f.path, bad)
    finally:
        os.close(fd)


def verify_model_dir(model_dir: Path) -> list[str] | None:
    """For the serving process: re-hash a committed ``<root>/models/<id>``; None if not in a cache."""
    record = record_at(Path(model_dir))
    return None if record is None else verify_files(Path(model_dir).resolve(), record)
