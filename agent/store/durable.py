"""Durable writes into the cache: atomic JSON files, fsync of files and directories, saving records."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from locality.records import Layout, ModelRecord, record_to_json


def save_record(layout: Layout, record: ModelRecord) -> None:
    write_json_atomic(layout.record(record.id), record_to_json(record))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader (or a crash) sees the old or the new file, never a torn one."""
    # A name of its own per writer: two writers sharing one tmp file tear the record.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("w") as out:
            json.dump(data, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not also leave a torn tmp file per try
        raise
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
