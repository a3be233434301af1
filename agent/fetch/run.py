"""Fetch runs: list a model at its origin, stage it in the store, move its chunks, commit it.

``Fetches`` is the fetch path's orchestration over the store's door (``agent.store.cache.Store``:
``claim``, ``adopt``, ``stage``, ``settle``, ``commit``): one listing (retried like chunks are),
the revision check, the chunk transfer (``agent.fetch.chunks``), progress ticks, and the
translation of source and disk failures into the store's errors.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import Settings
from agent.fetch.chunks import ByteCounter, Fetcher, RetryPolicy
from agent.fetch.sources import RegistryOptions, Source, SourceError, Timeouts, open_source
from agent.store.cache import Store
from agent.store.errors import FetchFailed, NoSpace
from agent.store.files import RemoteFile, revision_of
from agent.store.refreshmarks import is_refresh, mark_refresh
from agent.store.revswitch import same_revision
from agent.store.staging import ChunkKey, Staging
from locality.identity import ModelRef
from locality.records import ModelRecord
from locality.retry import retry

log = logging.getLogger(__name__)
_PROGRESS_SECONDS = 0.2


# What moves a model's missing chunks into its staging: ``Fetcher`` (the origin) unless the agent
# passes another, e.g. ``agent.peers.swarm.movers`` (origin and peers). Called as
# ``movers(ref, revision, source, staging, chunk_bytes=, concurrency=, retry=, on_bytes=)``.
Movers = Callable[..., Fetcher]


def origin_only(ref: ModelRef, revision: str, source: Source, staging: Staging, **kwargs: Any) -> Fetcher:
    return Fetcher(source, staging, **kwargs)


@dataclass(frozen=True)
class Progress:
    bytes_done: int
    bytes_total: int | None


class Fetches:
    """The fetches of one store. ``fetch`` runs on the event loop (several at once are fine)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        retry: RetryPolicy | None = None,
        sources: Callable[[ModelRef], Source] | None = None,
        movers: Movers | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.movers = movers or origin_only
        self._retry = retry or RetryPolicy(
            attempts=settings.attempts,
            read_timeout=settings.read_timeout,
            connect_timeout=settings.connect_timeout,
        )
        timeouts = Timeouts(connect=settings.connect_timeout, read=settings.read_timeout)
        # The benchmark injects a listing that nginx cannot give.
        registries = RegistryOptions(
            frozenset(settings.insecure_registries), tuple(map(Path, settings.registry_auth_files))
        )
        hub = settings.hf_endpoint
        self._sources = sources or (lambda ref: open_source(ref, timeouts, registries, hub))

    async def fetch(
        self,
        ref: ModelRef,
        progress: Callable[[Progress], None] | None = None,
        *,
        expect: str | None = None,
    ) -> ModelRecord:
        """Fetch and commit ``ref`` (or return its record at once); resumes; safe to cancel.
        ``expect``: fail unless the origin holds that revision."""
        known = self.store.get(ref.id) is not None
        if known and (record := await asyncio.to_thread(self.store.confirm, ref.id)) is not None:
            return record
        async with self.store.claim(ref.id):
            record = await asyncio.to_thread(self.store.adopt, ref.id)
            if record is not None:
                return record
            record = await self._fetch_locked(ref, progress or (lambda p: None), expect=expect)
        self.store.changed(ref.id)
        return record

    async def refresh(
        self,
        ref: ModelRef,
        progress: Callable[[Progress], None] | None = None,
        *,
        expect: str | None = None,
    ) -> ModelRecord | None:
        """Re-check the origin (one listing); when its revision changed, fetch it beside the
        current one and switch once verified. The new record, or None when nothing changed."""
        async with self.store.claim(ref.id):
            current = await asyncio.to_thread(self.store.adopt, ref.id)
            record = await self._fetch_locked(
                ref, progress or (lambda p: None), current=current, expect=expect
            )
        if record is current:
            return None
        self.store.changed(ref.id)
        return record

    async def origin_revision(self, ref: ModelRef) -> str:
        """The revision ``ref``'s origin holds now (one listing, retried like a fetch's)."""
        source = await asyncio.to_thread(self._sources, ref)
        try:
            return revision_of(await self._list(source))
        finally:
            await source.close()

    async def _fetch_locked(
        self,
        ref: ModelRef,
        progress: Callable[[Progress], None],
        *,
        current: ModelRecord | None = None,
        expect: str | None = None,
    ) -> ModelRecord:
        """List, then (unless ``current`` already holds the origin's revision) stage, fetch, commit."""
        source = await asyncio.to_thread(self._sources, ref)  # an S3 client takes a second to build
        staging = Staging(self.store.layout, ref.id)
        try:
            files = await self._list(source)
            revision = revision_of(files)
            if expect is not None and not same_revision(revision, expect):
                raise FetchFailed(
                    f"{ref.uri}: the origin holds revision {revision}, not the requested {expect} "
                    "(only the origin's current revision can be fetched)"
                )
            if current is not None and current.revision == revision:
                if is_refresh(staging.dir):  # an interrupted refresh whose change was undone
                    await asyncio.to_thread(staging.remove)
                return current
            try:
                done = await asyncio.to_thread(self.store.stage, ref, staging, files)
                if current is not None:  # a refresh: kept by recovery, resumed at the next start
                    await asyncio.to_thread(mark_refresh, staging.dir, ref.uri, expect)
                done = await self._run_fetcher(
                    ref=ref, source=source, staging=staging, files=files, done=done, progress=progress
                )
                return await self._commit_whole(ref, files, done, staging)
            except NoSpace:
                await asyncio.to_thread(staging.remove)
                raise
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    await asyncio.to_thread(staging.remove)
                    raise NoSpace(f"disk full while fetching {ref.uri}; staging removed") from exc
                raise FetchFailed(f"local I/O error while fetching {ref.uri}: {exc}") from exc
        finally:
            staging.close()
            await asyncio.shield(asyncio.to_thread(self.store.settle, ref.id))
            await source.close()

    async def _list(self, source: Source) -> list[RemoteFile]:
        """The source's listing; transient errors (5xx, resets) are retried like chunks are."""
        attempts = self._retry.attempts

        def retrying(n: int, exc: SourceError, _: float) -> None:
            log.warning("retrying the listing of %s after try %d/%d: %s", source.uri, n, attempts, exc)

        try:
            return await retry(
                source.list_files,
                attempts=attempts,
                delay=lambda n: self._retry.delay(n - 1),
                errors=SourceError,
                transient=lambda exc: not exc.permanent,
                on_retry=retrying,
            )
        except SourceError as exc:
            if exc.permanent:
                raise FetchFailed(exc.message) from exc
            raise FetchFailed(f"{exc.message} (gave up after {attempts} tries)") from exc

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
        fetcher = self.movers(
            ref,
            revision_of(files),
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
                await asyncio.to_thread(staging.remove)
            raise FetchFailed(exc.message) from exc
        finally:
            ticker.cancel()
            with suppress(asyncio.CancelledError):
                await ticker
        progress(Progress(min(counter.value, total), total))
        return done

    async def _commit_whole(
        self,
        ref: ModelRef,
        files: list[RemoteFile],
        done: dict[ChunkKey, str],
        staging: Staging,
    ) -> ModelRecord:
        """Commit in a thread; a cancel arriving meanwhile waits for the (short) commit, then applies."""
        commit = asyncio.ensure_future(asyncio.to_thread(self.store.commit, ref, files, done, staging))
        try:
            return await asyncio.shield(commit)
        except asyncio.CancelledError:
            with suppress(Exception):
                await commit
                self.store.changed(ref.id)  # committed after all: the caller's relabel must not be lost
            raise


async def _tick(counter: ByteCounter, total: int, progress: Callable[[Progress], None]) -> None:
    last = -1
    while True:
        if counter.value != last:
            last = counter.value
            progress(Progress(min(last, total), total))
        await asyncio.sleep(_PROGRESS_SECONDS)
