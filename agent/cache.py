"""The model cache facade: fetch, commit, list, pin, evict, verify and remove models on local disk.

Committed means durable: every file is fdatasync'ed and every directory fsync'ed, then the record
is written (tmp + fsync + rename), then ``staging/<id>/files`` is renamed to ``models/<id>``. A
crash between record and rename is rolled forward by ``scan``; a model dir without a record is
debris and removed. Only one fetch per model runs at a time, across processes too (``flock``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path

from agent.commit import Incomplete, allocated_bytes, commit_staging, pending_pins, set_pending_pins
from agent.config import Settings
from agent.durable import fsync_dir, save_record
from agent.eviction import Candidate, Plan, plan_eviction
from agent.fetcher import ByteCounter, Fetcher, RetryPolicy
from agent.recovery import recover, remove_staging
from agent.sources import RemoteFile, Source, SourceError, open_source
from agent.staging import ChunkKey, Staging, staging_lock
from locality.digests import verify_files
from locality.identity import ModelRef
from locality.records import Layout, ModelRecord, load_record

log = logging.getLogger(__name__)
_PROGRESS_SECONDS = 0.2


class CacheError(Exception):
    """A cache failure with a message meant for users."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FetchFailed(CacheError):
    """Permanent: 403/404, a bad or hostile key, a size mismatch, an origin that says no."""


class VerificationFailed(FetchFailed):
    """The bytes on disk do not match the source's size or the chunk digests recorded in-stream."""


class NoSpace(CacheError):
    """The quota or the disk is full and pinned models make room impossible."""


class Pinned(CacheError):
    """``remove`` of a pinned model without ``force``."""


class UnknownModel(CacheError):
    """No committed model with that id."""


@dataclass(frozen=True)
class Progress:
    bytes_done: int
    bytes_total: int | None


class Cache:
    """One cache root. ``fetch`` runs on the event loop (several at once are fine); the blocking
    methods may also be called from worker threads (``asyncio.to_thread``): reads take snapshots
    (``list(dict.values())`` is atomic under the GIL). ``on_change`` then runs on that thread.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        on_change: Callable[[str], None] | None = None,
        now: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
        sources: Callable[[ModelRef], Source] = open_source,
    ) -> None:
        self.settings = settings
        self.root = Path(settings.cache_dir)
        self.layout = Layout(self.root)
        self._on_change = on_change or (lambda model_id: None)
        self._now = now
        self._retry = retry
        self._sources = sources  # the benchmark injects a listing that nginx cannot give
        self._records: dict[str, ModelRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._reserved: dict[str, int] = {}
        self._scanned = False

    # --- reading -------------------------------------------------------------------------------
    def scan(self) -> list[ModelRecord]:
        """Load records, roll forward half-done commits, delete debris, keep resumable staging."""
        self.layout.create()
        self._records = {r.id: r for r in recover(self.layout)}
        self._scanned = True
        return self.records()

    def records(self) -> list[ModelRecord]:
        self._ensure()
        return sorted(list(self._records.values()), key=lambda r: r.id)

    def get(self, model_id: str) -> ModelRecord | None:
        self._ensure()
        return self._records.get(model_id)

    def model_path(self, model_id: str) -> Path:
        return self.layout.model(model_id)

    def usage(self) -> tuple[int, int]:
        """``(used, quota)``: committed bytes plus fetches in flight; quota defaults to the disk size."""
        self._ensure()
        used = sum(r.total_bytes for r in list(self._records.values())) + sum(list(self._reserved.values()))
        if self.settings.quota_bytes is not None:
            return used, self.settings.quota_bytes
        st = os.statvfs(self.root)
        return used, st.f_blocks * st.f_frsize

    def verify(self, model_id: str) -> list[str]:
        return verify_files(self.model_path(model_id), self._require(model_id))

    # --- changing --------------------------------------------------------------------------------
    async def fetch(self, ref: ModelRef, progress: Callable[[Progress], None] | None = None) -> ModelRecord:
        """Fetch and commit ``ref`` (or return its record at once); resumes; safe to cancel."""
        self._ensure()
        if (record := self._records.get(ref.id)) is not None:
            return record
        async with self._locks.setdefault(ref.id, asyncio.Lock()), staging_lock(self.layout, ref.id):
            record = load_record(self.layout, ref.id)  # another process may have committed it
            if record is not None and self.model_path(ref.id).is_dir():
                self._records[ref.id] = record
                return record
            record = await self._fetch_locked(ref, progress or (lambda p: None))
        self._on_change(ref.id)
        return record

    def remove(self, model_id: str, *, force: bool = False) -> None:
        """Delete a committed model, or the staged bytes of one not committed (no fetch may run)."""
        self._ensure()
        if model_id not in self._records and remove_staging(self.layout, model_id):
            return
        record = self._require(model_id)
        if record.pins and not force:
            raise Pinned(f"model {model_id} is pinned ({', '.join(sorted(record.pins))}); use force")
        self._delete(model_id)
        self._on_change(model_id)

    def pin(self, model_id: str, reason: str) -> None:
        self._set_pin(model_id, reason, add=True)

    def unpin(self, model_id: str, reason: str) -> None:
        self._set_pin(model_id, reason, add=False)

    def touch(self, model_id: str) -> None:
        record = self._require(model_id)
        self._save(replace(record, last_used=self._now()))

    def gc(self) -> list[str]:
        """Evict least-recently-used unpinned models while the cache is above its high watermark."""
        plan = self._plan()
        for model_id in plan.evict:
            self._evict(model_id)
        return list(plan.evict)

    # --- internals -------------------------------------------------------------------------------
    def _ensure(self) -> None:
        if not self._scanned:
            self.scan()

    def _require(self, model_id: str) -> ModelRecord:
        self._ensure()
        record = self._records.get(model_id)
        if record is None:
            raise UnknownModel(f"no model {model_id!r} in {self.root}")
        return record

    def _save(self, record: ModelRecord) -> None:
        save_record(self.layout, record)
        self._records[record.id] = record

    def _set_pin(self, model_id: str, reason: str, *, add: bool) -> None:
        self._ensure()
        record = self._records.get(model_id)
        if record is not None:
            pins = record.pins | {reason} if add else record.pins - {reason}
            self._save(replace(record, pins=pins))
            return
        pending = set(pending_pins(self.layout, model_id))
        set_pending_pins(self.layout, model_id, pending | {reason} if add else pending - {reason})

    def _candidates(self) -> list[Candidate]:
        return [
            Candidate(r.id, r.total_bytes, r.last_used, bool(r.pins)) for r in list(self._records.values())
        ]

    def _evict(self, model_id: str) -> None:
        log.info("evicting model %s", model_id)
        self._delete(model_id)
        self._on_change(model_id)

    def _delete(self, model_id: str) -> None:
        """Rename the dir into trash (atomic for readers), drop the record, then delete the files."""
        trash = self.layout.trash / f"{model_id}.{uuid.uuid4().hex[:8]}"
        with suppress(FileNotFoundError):
            os.rename(self.model_path(model_id), trash)
        self.layout.record(model_id).unlink(missing_ok=True)
        fsync_dir(self.layout.records)
        self._records.pop(model_id, None)
        shutil.rmtree(trash, ignore_errors=True)

    def _plan(self, incoming: int = 0, free: int | None = None) -> Plan:
        """The eviction plan for the cache as it is, plus ``incoming`` bytes about to arrive."""
        used, quota = self.usage()
        return plan_eviction(
            self._candidates(),
            used=used,
            quota=quota,
            high=self.settings.high_watermark,
            low=self.settings.low_watermark,
            incoming=incoming,
            free=free,
        )

    def _make_room(self, ref: ModelRef, incoming: int, staged: int) -> None:
        st = os.statvfs(self.root)
        plan = self._plan(incoming, free=st.f_bavail * st.f_frsize + staged)
        if not plan.fits:
            raise NoSpace(f"no room for {ref.uri}: {plan.reason}")
        for model_id in plan.evict:
            self._evict(model_id)

    async def _fetch_locked(self, ref: ModelRef, progress: Callable[[Progress], None]) -> ModelRecord:
        source = self._sources(ref)
        staging = Staging(self.layout, ref.id)
        try:
            files = await self._list(source)
            total = sum(f.size for f in files)
            try:
                done = staging.open(ref.uri, self.settings.chunk_bytes, files)
                self._make_room(ref, total, allocated_bytes(staging.files_dir))
                self._reserved[ref.id] = total
                done = await self._run_fetcher(
                    ref=ref, source=source, staging=staging, files=files, done=done, progress=progress
                )
                return await self._commit_whole(ref, files, done, staging)
            except NoSpace:
                staging.remove()
                raise
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    staging.remove()
                    raise NoSpace(f"disk full while fetching {ref.uri}; staging removed") from exc
                raise FetchFailed(f"local I/O error while fetching {ref.uri}: {exc}") from exc
        finally:
            self._reserved.pop(ref.id, None)
            staging.close()
            await source.close()

    async def _list(self, source: Source) -> list[RemoteFile]:
        """The source's listing; transient errors (5xx, resets) are retried like chunks are."""
        retry = self._retry or RetryPolicy()
        for attempt in range(retry.attempts):
            try:
                return await source.list_files()
            except SourceError as exc:
                if exc.permanent or attempt + 1 >= retry.attempts:
                    raise FetchFailed(exc.message) from exc
                log.info("retrying the listing of %s: %s", source.uri, exc.message)
                await asyncio.sleep(retry.delay(attempt))
        raise AssertionError("unreachable")

    async def _run_fetcher(
        self,
        *,
        ref: ModelRef,
        source: Source,
        staging: Staging,
        files: list[RemoteFile],
        done: dict[ChunkKey, str],
        progress: Callable[[Progress], None],
    ) -> dict[ChunkKey, str]:
        total = sum(f.size for f in files)
        counter = ByteCounter()
        fetcher = Fetcher(
            source,
            staging,
            chunk_bytes=self.settings.chunk_bytes,
            concurrency=self.settings.concurrency,
            retry=self._retry,
            on_bytes=counter.add,
        )
        ticker = asyncio.create_task(_tick(counter, total, progress))
        try:
            done = await fetcher.run(files, done)
        except SourceError as exc:
            if exc.permanent:
                staging.remove()
            raise FetchFailed(exc.message) from exc
        finally:
            ticker.cancel()
            with suppress(asyncio.CancelledError):
                await ticker
        progress(Progress(min(counter.value, total), total))
        return done

    async def _commit_whole(
        self, ref: ModelRef, files: list[RemoteFile], done: dict[ChunkKey, str], staging: Staging
    ) -> ModelRecord:
        """Commit in a thread; a cancel arriving meanwhile waits for the (short) commit, then applies."""
        commit = asyncio.ensure_future(asyncio.to_thread(self._commit, ref, files, done, staging))
        try:
            return await asyncio.shield(commit)
        except asyncio.CancelledError:
            with suppress(Exception):
                await commit
                self._on_change(ref.id)  # committed after all: the caller's relabel must not be lost
            raise

    def _commit(
        self, ref: ModelRef, files: list[RemoteFile], done: dict[ChunkKey, str], staging: Staging
    ) -> ModelRecord:
        try:
            record = commit_staging(
                self.layout, ref, files, done, staging, chunk_bytes=self.settings.chunk_bytes, now=self._now()
            )
        except Incomplete as exc:
            staging.remove()
            raise VerificationFailed(str(exc)) from exc
        self._records[ref.id] = record
        return record


async def _tick(counter: ByteCounter, total: int, progress: Callable[[Progress], None]) -> None:
    last = -1
    while True:
        if counter.value != last:
            last = counter.value
            progress(Progress(min(last, total), total))
        await asyncio.sleep(_PROGRESS_SECONDS)
