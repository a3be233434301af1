"""Staging of one model's fetch: the partial files, the source manifest and a journal of finished chunks.

``staging/<id>/files/`` holds the files being fetched (renamed to ``models/<id>`` at commit),
``manifest.json`` the source listing they belong to (path, size, ETag, chunk size) and ``journal``
one JSON line per finished chunk with its xxh3_128. A line is appended only after the chunk's
bytes were written, so after a kill -9 every journaled chunk is in the page cache or on disk; a
torn last line is ignored. After a power cut the fetcher re-hashes journaled chunks before
trusting them.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agent.store.durable import write_json_atomic
from agent.store.files import RemoteFile
from locality.records import Layout

ChunkKey = tuple[str, int]
LOCK_NOTICE_SECONDS = 10.0
log = logging.getLogger(__name__)


class Staging:
    """One model's staging directory."""

    def __init__(self, layout: Layout, model_id: str) -> None:
        self.dir = layout.stage(model_id)
        self.files_dir = self.dir / "files"
        self._manifest = self.dir / "manifest.json"
        self._journal = self.dir / "journal"
        self._fd: int | None = None

    def open(self, uri: str, chunk_bytes: int, files: Sequence[RemoteFile]) -> dict[ChunkKey, str]:
        """Start or resume; return the finished chunks that still belong to this listing.

        A chunk is kept when the old manifest had the same chunk size and the same (size, ETag)
        for its file; partial files of changed or vanished objects are deleted.
        """
        manifest = _manifest(uri, chunk_bytes, files)
        old = _read_json(self._manifest)
        kept: dict[ChunkKey, str] = {}
        if old is not None and old.get("uri") == uri and old.get("chunk_bytes") == chunk_bytes:
            same = {p for p, v in manifest["files"].items() if old.get("files", {}).get(p) == v}
            kept = {k: d for k, d in self._read_journal().items() if k[0] in same}
        elif self.dir.exists():
            shutil.rmtree(self.dir)
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._remove_strays({f.path for f in files})
        write_json_atomic(self._manifest, manifest)
        self._rewrite_journal(kept)
        self._fd = os.open(self._journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return kept

    def path(self, rel: str) -> Path:
        return self.files_dir / rel

    def record(self, key: ChunkKey, digest: str) -> None:
        """Journal a finished chunk (one ``write``: a crash leaves whole lines or a torn last one)."""
        assert self._fd is not None, "staging not open"
        os.write(self._fd, (json.dumps([key[0], key[1], digest]) + "\n").encode())

    def forget(self, keys: Sequence[ChunkKey], kept: dict[ChunkKey, str]) -> None:
        """Drop chunks that failed their re-check: rewrite the journal without them."""
        for key in keys:
            kept.pop(key, None)
        self.close()
        self._rewrite_journal(kept)
        self._fd = os.open(self._journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _read_journal(self) -> dict[ChunkKey, str]:
        done: dict[ChunkKey, str] = {}
        try:
            lines = self._journal.read_text().splitlines()
        except FileNotFoundError:
            return done
        for line in lines:
            try:
                path, index, digest = json.loads(line)
                done[(str(path), int(index))] = str(digest)
            except (ValueError, TypeError):
                continue  # the torn last line of a crash
        return done

    def _rewrite_journal(self, done: dict[ChunkKey, str]) -> None:
        tmp = self.dir / "journal.tmp"
        tmp.write_text("".join(json.dumps([p, i, d]) + "\n" for (p, i), d in sorted(done.items())))
        os.replace(tmp, self._journal)

    def _remove_strays(self, wanted: set[str]) -> None:
        for path in sorted(self.files_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            rel = path.relative_to(self.files_dir).as_posix()
            if path.is_dir() and not path.is_symlink():
                if not any(w.startswith(rel + "/") for w in wanted):
                    shutil.rmtree(path, ignore_errors=True)
            elif rel not in wanted:
                path.unlink()


@asynccontextmanager
async def staging_lock(layout: Layout, model_id: str) -> AsyncIterator[None]:
    """Hold ``staging/<id>.lock``: one fetch per model across processes (the kernel drops the
    ``flock`` when its process dies, so a kill -9 never leaves a stale lock)."""
    layout.staging.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.staging / f"{model_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    said = 0.0
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - said >= LOCK_NOTICE_SECONDS:  # at once, then every 10 s
                    log.warning("waiting for another fetch of model %s (%s)", model_id, _holder(fd))
                    said = time.monotonic()
                await asyncio.sleep(0.2)
        os.ftruncate(fd, 0)  # who holds it, for a fetch that has to wait
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    return text or "holder unknown"


def _manifest(uri: str, chunk_bytes: int, files: Sequence[RemoteFile]) -> dict[str, Any]:
    return {"uri": uri, "chunk_bytes": chunk_bytes, "files": {f.path: [f.size, f.etag] for f in files}}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
