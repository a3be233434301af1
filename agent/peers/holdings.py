"""What this agent can serve to peers: the verified chunks of its fetches in progress (live, in
memory) and its committed models (their records), each as a ``ChunkMap`` plus the directory the
bytes are in.

Readers follow a map by its version token (``MapFeed``): a reader that names the token it has gets
only the chunks verified since (a delta), or waits until something changes (a long poll), so a
swarm's map traffic is proportional to what changes, not to the size of the map times a poll rate.
A reader of a revision not held yet may wait for its fetch to start here (``wait_arrival``): agents
that start one model together see each other as soon as they begin, not a poll interval later.

A fetch whose chunks are all verified stays served from its staging directory (``settle``) until
its commit is on disk: the commit (fsync of every file, then the record, then one rename) can take
seconds on a big model, and a holder that answered 404 meanwhile would be dropped by the peers
copying from it just then.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.peers.chunkmap import ChunkMap, FileId, encode_map
from agent.peers.plan import ChunkId
from locality.records import Layout, ModelRecord, load_record


@dataclass
class LiveFetch:
    """A fetch in progress, as its peers see it: ``done`` holds only verified chunks."""

    model_id: str
    revision: str
    chunk_bytes: int
    files: dict[str, FileId]
    dir: Path  # the staging files directory
    done: dict[ChunkId, str] = field(default_factory=dict)
    origin_inflight: set[ChunkId] = field(default_factory=set)
    settled: float | None = None  # when every chunk was verified (monotonic); None while fetching
    epoch: str = field(default_factory=lambda: secrets.token_hex(6))  # this fetch, among its restarts
    version: int = 0  # bumped by ``changed``
    _waiters: set[asyncio.Future[None]] = field(default_factory=set, repr=False)

    def changed(self) -> None:
        """A chunk was verified (``done`` only grows while the fetch runs), an origin read began or
        ended, or the fetch settled or ended: wake the readers waiting for news."""
        self.version += 1
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            fut.get_loop().call_soon_threadsafe(_resolve, fut)

    def token(self) -> str:
        return f"{self.epoch}.{self.version}.{len(self.done)}"

    async def wait_change(self, token: str, seconds: float) -> None:
        """Return when ``token`` is no longer current, or after ``seconds``."""
        if token != self.token() or seconds <= 0:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        try:
            await asyncio.wait_for(fut, seconds)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(fut)

    def answer(self, since: str | None) -> dict[str, Any]:
        """The map's JSON: whole, or the chunks verified since ``since`` when it names this fetch."""
        m = self.chunk_map(chunks=False)
        epoch, _, rest = (since or "").partition(".")
        counted = rest.partition(".")[2]
        if epoch == self.epoch and counted.isdigit() and int(counted) <= len(self.done):
            news = itertools.islice(self.done.items(), int(counted), None)  # dicts keep insertion order
            return encode_map(m, list(news), version=self.token(), delta=True)
        return encode_map(m, list(self.done.items()), version=self.token())

    def chunk_map(self, *, chunks: bool = True, copy: bool = True) -> ChunkMap:
        """The map now (``copy=False``: over the live dicts, for a look within one step of the loop)."""
        return ChunkMap(
            self.model_id,
            self.revision,
            self.chunk_bytes,
            "fetching" if self.settled is None else "ready",
            dict(self.files) if copy else self.files,
            (dict(self.done) if copy else self.done) if chunks else {},
            frozenset(self.origin_inflight),
        )


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


@dataclass(frozen=True)
class MapFeed:
    """One held revision as its map's readers see it: the current version token, the answer to a
    reader that has ``since``, and a wait for the next change (``Holdings.feed``)."""

    token: str
    live: LiveFetch | None
    committed: ChunkMap | None

    def answer(self, since: str | None) -> dict[str, Any]:
        if self.live is not None:
            return self.live.answer(since)
        assert self.committed is not None
        return encode_map(self.committed, self.committed.chunks.items(), version=self.token)

    async def wait_change(self, seconds: float) -> None:
        """Until the map may have changed; a committed map changes only when its record does."""
        if self.live is not None:
            await self.live.wait_change(self.token, seconds)
        else:
            await asyncio.sleep(seconds)


def record_files(record: ModelRecord) -> dict[str, FileId]:
    return {
        f.path: FileId(f.size, f.etag, f.version, None if f.origin_checksum == "none" else f.origin_checksum)
        for f in record.files
    }


def record_map(record: ModelRecord) -> ChunkMap:
    chunk_bytes = record.files[0].chunk_bytes if record.files else 0
    chunks = {(f.path, i): d for f in record.files for i, d in enumerate(f.chunk_digests)}
    return ChunkMap(
        record.model_id, record.revision or "", chunk_bytes, "ready", record_files(record), chunks
    )


class Holdings:
    """The registry the peer endpoint reads and the fetch path writes (one per agent process)."""

    SETTLED_SECONDS = 600.0  # a settled fetch whose commit never shows (it failed) is forgotten then

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._live: dict[str, LiveFetch] = {}
        self._lock = threading.Lock()
        self._committed: dict[str, tuple[int, ChunkMap, Path]] = {}  # id -> (record mtime, map, dir)
        self._arrivals: dict[str, set[asyncio.Future[None]]] = {}  # id -> readers waiting for a fetch

    def start(self, live: LiveFetch) -> None:
        with self._lock:
            self._live[live.model_id] = live
            waiters = self._arrivals.pop(live.model_id, set())
        for fut in waiters:
            fut.get_loop().call_soon_threadsafe(_resolve, fut)

    async def wait_arrival(self, model_id: str, revision: str, seconds: float) -> MapFeed | None:
        """This revision's feed once it is held here (a fetch of it starts), or None after ``seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (found := self.feed(model_id, revision)) is None:
            left = deadline - loop.time()
            if left <= 0:
                return None
            fut: asyncio.Future[None] = loop.create_future()
            with self._lock:
                self._arrivals.setdefault(model_id, set()).add(fut)
            try:
                if self.feed(model_id, revision) is None:  # a start between the look and the wait
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(fut, left)
            finally:
                with self._lock:
                    waiting = self._arrivals.get(model_id)
                    if waiting is not None:
                        waiting.discard(fut)
                        if not waiting:
                            del self._arrivals[model_id]
        return found

    def finish(self, model_id: str) -> None:
        """The fetch ended without all of its chunks: nothing of it is served any more."""
        with self._lock:
            live = self._live.pop(model_id, None)
        if live is not None:
            live.changed()

    def settle(self, model_id: str) -> None:
        """Every chunk is verified: serve them from staging until the commit is on disk."""
        with self._lock:
            live = self._live.get(model_id)
            if live is not None:
                live.origin_inflight.clear()
                live.settled = time.monotonic()
        if live is not None:
            live.changed()

    def live_revisions(self) -> list[tuple[str, str]]:
        """``(model id, revision)`` of every fetch in progress (settled ones until committed)."""
        for model_id in list(self._live):
            self._committed_or_live(model_id)  # forgets settled fetches that are committed
        with self._lock:
            return [(live.model_id, live.revision) for live in self._live.values()]

    def find(self, model_id: str, revision: str) -> tuple[ChunkMap, Path] | None:
        """This revision's map and byte directory, a fetch in progress first (over its live dicts:
        read it within one step of the event loop); None if not held."""
        found = self._committed_or_live(model_id)
        if found is not None and found[0].revision == revision:
            return found
        return None

    def feed(self, model_id: str, revision: str) -> MapFeed | None:
        """What a map reader follows for this revision (a fetch in progress first); None if not held."""
        with self._lock:
            live = self._live.get(model_id)
        if live is not None and live.settled is None and live.revision == revision:
            return MapFeed(live.token(), live, None)
        found = self._committed_or_live(model_id)
        if found is None or found[0].revision != revision:
            return None
        with self._lock:
            live = self._live.get(model_id)
        if live is not None and live.revision == revision:  # settled, its commit not on disk yet
            return MapFeed(live.token(), live, None)
        mtime = self._committed.get(model_id, (0, None, None))[0]
        return MapFeed(f"c{mtime}", None, found[0])

    def _committed_or_live(self, model_id: str) -> tuple[ChunkMap, Path] | None:
        """The fetch in progress; else the committed revision, or a settled fetch until its commit
        is on disk (record written and files renamed)."""
        with self._lock:
            live = self._live.get(model_id)
            if live is not None and live.settled is None:
                return live.chunk_map(copy=False), live.dir
        committed = self._committed_map(model_id)
        if live is None or live.settled is None:
            return committed
        done = committed is not None and committed[0].revision == live.revision and committed[1].is_dir()
        stale = time.monotonic() - live.settled > self.SETTLED_SECONDS or not live.dir.is_dir()
        if done or stale:  # committed, or the commit failed and its staging went
            with self._lock:
                if self._live.get(model_id) is live:
                    del self._live[model_id]
            return committed
        return live.chunk_map(copy=False), live.dir

    def _committed_map(self, model_id: str) -> tuple[ChunkMap, Path] | None:
        try:
            mtime = os.stat(self.layout.record(model_id)).st_mtime_ns
        except OSError:
            return None
        hit = self._committed.get(model_id)
        if hit is not None and hit[0] == mtime:
            return hit[1], hit[2]
        record = load_record(self.layout, model_id)
        if record is None or not record.revision:
            return None
        entry = (mtime, record_map(record), self.layout.models / record.dir_name)
        self._committed[model_id] = entry
        return entry[1], entry[2]
