"""Fetch a model's files into staging: parallel ranged GETs, per-chunk xxh3_128, retries, resume.

Bounded: ``concurrency`` threads, each with one reused buffer (``transfer.BUFFER_BYTES``), so
memory does not grow with the model. The event loop only schedules chunks, sleeps between
retries and reports progress; the bytes move in threads (``RangeReader``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

from agent.fetch.sources.base import Source, SourceError, Unpacker, archives
from agent.fetch.sources.transfer import ChunkJob, RangeReader, Stopped
from agent.store.files import RemoteFile
from agent.store.staging import ChunkKey, Staging
from locality.backoff import backoff_delay
from locality.digests import chunk_count
from locality.recordcheck import hash_chunk
from locality.retry import retry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Per-chunk retries of transient errors: ``delay(n) = backoff_delay(n + 1, base, cap, U(0, 1))``."""

    attempts: int = 6
    base: float = 0.5
    cap: float = 10.0
    read_timeout: float = 30.0  # seconds without a byte before a GET counts as failed (transient)
    connect_timeout: float = 10.0  # seconds to open a connection to the origin

    def delay(self, attempt: int) -> float:
        return backoff_delay(attempt + 1, self.base, self.cap, random.random())


class ByteCounter:
    """Bytes received so far, added to from the fetch threads."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


def chunk_plan(files: Sequence[RemoteFile], chunk_bytes: int) -> list[tuple[RemoteFile, int]]:
    """Every ``(file, chunk index)`` in file order; a file without Range support is one piece (-1)."""
    plan: list[tuple[RemoteFile, int]] = []
    for f in files:
        if not f.ranges:
            plan.append((f, -1))
        else:
            plan.extend((f, i) for i in range(chunk_count(f.size, chunk_bytes)))
    return plan


class Fetcher:
    """Fill one staging directory from one source; ``run`` returns every chunk digest."""

    def __init__(
        self,
        source: Source,
        staging: Staging,
        *,
        chunk_bytes: int,
        concurrency: int,
        retry: RetryPolicy | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.source = source
        self.staging = staging
        self.chunk_bytes = chunk_bytes
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self._on_bytes = on_bytes or (lambda n: None)
        self._stop = threading.Event()
        self._readers: list[RangeReader] = []
        self._fds: dict[str, int] = {}

    async def run(self, files: Sequence[RemoteFile], done: dict[ChunkKey, str]) -> dict[ChunkKey, str]:
        """Fetch what ``done`` lacks; raise ``SourceError``, ``OSError`` or ``CancelledError``."""
        loop = asyncio.get_running_loop()
        groups = archives(self.source, files)  # files unpacked from archives, not ranged
        pool = ThreadPoolExecutor(max_workers=self.concurrency + bool(groups), thread_name_prefix="fetch")
        try:
            await loop.run_in_executor(pool, self._open_files, files)
            bad = await loop.run_in_executor(pool, self._recheck, files, dict(done))
            if bad:
                log.warning("%d journaled chunks failed their re-check; fetching them again", len(bad))
                self.staging.forget(bad, done)
            by_path = {f.path: f for f in files}
            for path, index in done:
                self._on_bytes(self._chunk_len(by_path[path], index))
            unpacked = {f.path for group in groups.values() for f in group}
            ranged = [f for f in files if f.path not in unpacked]
            todo = deque(
                item for item in chunk_plan(ranged, self.chunk_bytes) if (item[0].path, item[1]) not in done
            )
            workers = [
                asyncio.create_task(self._worker(pool, todo, done))
                for _ in range(min(self.concurrency, len(todo)))
            ]
            if groups:
                workers.append(asyncio.create_task(self._unpack_all(pool, groups, done)))
            try:
                await asyncio.gather(*workers)
            finally:
                self._halt()
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        finally:
            self._halt()
            pool.shutdown(wait=True)  # the threads stop within one buffer: sockets are shut down
            for reader in self._readers:
                reader.close()
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        return done

    def _halt(self) -> None:
        self._stop.set()
        for reader in self._readers:
            reader.abort()

    async def _worker(
        self, pool: ThreadPoolExecutor, todo: deque[tuple[RemoteFile, int]], done: dict[ChunkKey, str]
    ) -> None:
        reader = RangeReader(
            self._stop, timeout=self.retry.read_timeout, connect_timeout=self.retry.connect_timeout
        )
        self._readers.append(reader)
        while todo:
            file, index = todo.popleft()
            job = self._job(file, index)
            await self._get_chunk(pool, reader, file, index, job)
            await self._finish(pool, file, index, job, done)

    async def _get_chunk(
        self, pool: ThreadPoolExecutor, reader: RangeReader, file: RemoteFile, index: int, job: ChunkJob
    ) -> None:
        """One chunk's GET, retried on transient errors; a try that received bytes resets the count."""
        loop = asyncio.get_running_loop()
        seen = [job.received]

        async def get() -> None:
            seen[0] = job.received
            target = await loop.run_in_executor(pool, self.source.target, file)
            await loop.run_in_executor(pool, reader.fetch, target, job, file.etag, self._on_bytes)

        def retrying(n: int, exc: SourceError, _: float) -> None:
            tries = f"{max(n, 1)}/{self.retry.attempts}"
            log.warning("retrying %s chunk %d after try %s: %s", file.path, index, tries, exc.message)

        try:
            await retry(
                get,
                attempts=self.retry.attempts,
                delay=self.retry.delay,
                errors=SourceError,
                transient=lambda exc: not exc.permanent,
                progressed=lambda _: job.received > seen[0],
                on_retry=retrying,
            )
        except SourceError as exc:
            if exc.permanent:
                raise
            gave_up = f"{exc.message} (gave up after {self.retry.attempts} tries)"
            raise SourceError(gave_up, permanent=False) from exc

    async def _unpack_all(
        self, pool: ThreadPoolExecutor, groups: dict[str, list[RemoteFile]], done: dict[ChunkKey, str]
    ) -> None:
        """One archive at a time, beside the ranged workers; its files' chunks are digested after."""
        for archive, group in groups.items():
            files = [f for f in group if not all(k in done for k in self._keys(f))]
            if not files:
                continue
            await self._unpack(pool, archive, {f.path: self._fds[f.path] for f in files})
            for f in files:
                await self._record_whole(pool, f, done)

    async def _unpack(self, pool: ThreadPoolExecutor, archive: str, fds: dict[str, int]) -> None:
        """Unpack one archive into ``fds``, retried whole on transient errors."""
        loop = asyncio.get_running_loop()
        source = cast(Unpacker, self.source)
        await retry(
            lambda: loop.run_in_executor(pool, source.unpack, archive, fds, self._stop, self._on_bytes),
            attempts=self.retry.attempts,
            delay=self.retry.delay,
            errors=SourceError,
            transient=lambda exc: not exc.permanent,
            on_retry=lambda n, exc, _: log.warning(
                "retrying archive %s after try %d/%d: %s", archive, n, self.retry.attempts, exc.message
            ),
        )

    def _keys(self, file: RemoteFile) -> list[ChunkKey]:
        return [(file.path, i) for i in range(chunk_count(file.size, self.chunk_bytes))]

    async def _finish(
        self, pool: ThreadPoolExecutor, file: RemoteFile, index: int, job: ChunkJob, done: dict[ChunkKey, str]
    ) -> None:
        if index >= 0:
            key = (file.path, index)
            done[key] = job.hasher.hexdigest()
            self.staging.record(key, done[key])
            return
        await self._record_whole(pool, file, done)

    async def _record_whole(
        self, pool: ThreadPoolExecutor, file: RemoteFile, done: dict[ChunkKey, str]
    ) -> None:
        """A file written whole (no Range support, or unpacked): digest its chunks by reading back."""
        digests = await asyncio.get_running_loop().run_in_executor(pool, self._hash_file, file)
        for i, digest in enumerate(digests):
            done[(file.path, i)] = digest
            self.staging.record((file.path, i), digest)

    def _job(self, file: RemoteFile, index: int) -> ChunkJob:
        fd = self._fds[file.path]
        if index < 0:
            return ChunkJob(fd=fd, offset=0, length=file.size, file_size=file.size, ranged=False)
        return ChunkJob(
            fd=fd, offset=index * self.chunk_bytes, length=self._chunk_len(file, index), file_size=file.size
        )

    def _chunk_len(self, file: RemoteFile, index: int) -> int:
        return min(self.chunk_bytes, file.size - index * self.chunk_bytes)

    def _open_files(self, files: Sequence[RemoteFile]) -> None:
        """Create and preallocate every staging file (an ENOSPC shows up here, before any GET)."""
        for f in files:
            path = self.staging.path(f.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            self._fds[f.path] = fd
            if os.fstat(fd).st_size > f.size:
                os.ftruncate(fd, f.size)
            if f.size:
                try:
                    os.posix_fallocate(fd, 0, f.size)
                except OSError as exc:
                    if exc.errno not in (95, 22):  # EOPNOTSUPP / EINVAL: no fallocate on this fs
                        raise
                    os.ftruncate(fd, f.size)

    def _recheck(self, files: Sequence[RemoteFile], done: dict[ChunkKey, str]) -> list[ChunkKey]:
        """Re-hash journaled chunks: a power cut can leave a journal line ahead of its data."""
        buf = memoryview(bytearray(8 << 20))
        bad = []
        for (path, index), digest in sorted(done.items()):
            file = _file(files, path)
            if file is None or index >= chunk_count(file.size, self.chunk_bytes):
                bad.append((path, index))
                continue
            got = hash_chunk(self._fds[path], index * self.chunk_bytes, self._chunk_len(file, index), buf)
            if got != digest:
                bad.append((path, index))
        return bad

    def _hash_file(self, file: RemoteFile) -> list[str]:
        buf = memoryview(bytearray(8 << 20))
        fd = self._fds[file.path]
        return [
            hash_chunk(fd, i * self.chunk_bytes, self._chunk_len(file, i), buf)
            for i in range(chunk_count(file.size, self.chunk_bytes))
        ]


def _file(files: Sequence[RemoteFile], path: str) -> RemoteFile | None:
    return next((f for f in files if f.path == path), None)


__all__ = ["Fetcher", "RetryPolicy", "SourceError", "Stopped", "chunk_plan"]
