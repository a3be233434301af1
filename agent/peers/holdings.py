"""What this agent can serve to peers: the verified chunks of its fetches in progress (live, in
memory) and its committed models (their records), each as a ``ChunkMap`` plus the directory the
bytes are in.

A fetch whose chunks are all verified stays served from its staging directory (``settle``) until
its commit is on disk: the commit (fsync of every file, then the record, then one rename) can take
seconds on a big model, and a holder that answered 404 meanwhile would be dropped by the peers
copying from it just then.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.peers.chunkmap import ChunkMap, FileId
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

    def chunk_map(self) -> ChunkMap:
        return ChunkMap(
            self.model_id,
            self.revision,
            self.chunk_bytes,
            "fetching" if self.settled is None else "ready",
            dict(self.files),
            dict(self.done),
            frozenset(self.origin_inflight),
        )


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

    def start(self, live: LiveFetch) -> None:
        with self._lock:
            self._live[live.model_id] = live

    def finish(self, model_id: str) -> None:
        """The fetch ended without all of its chunks: nothing of it is served any more."""
        with self._lock:
            self._live.pop(model_id, None)

    def settle(self, model_id: str) -> None:
        """Every chunk is verified: serve them from staging until the commit is on disk."""
        with self._lock:
            live = self._live.get(model_id)
            if live is not None:
                live.origin_inflight.clear()
                live.settled = time.monotonic()

    def live_revisions(self) -> list[tuple[str, str]]:
        """``(model id, revision)`` of every fetch in progress (settled ones until committed)."""
        for model_id in list(self._live):
            self._committed_or_live(model_id)  # forgets settled fetches that are committed
        with self._lock:
            return [(live.model_id, live.revision) for live in self._live.values()]

    def find(self, model_id: str, revision: str) -> tuple[ChunkMap, Path] | None:
        """This revision's map and byte directory, a fetch in progress first; None if not held."""
        found = self._committed_or_live(model_id)
        if found is not None and found[0].revision == revision:
            return found
        return None

    def _committed_or_live(self, model_id: str) -> tuple[ChunkMap, Path] | None:
        """The fetch in progress; else the committed revision, or a settled fetch until its commit
        is on disk (record written and files renamed)."""
        with self._lock:
            live = self._live.get(model_id)
            if live is not None and live.settled is None:
                return live.chunk_map(), live.dir
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
        return live.chunk_map(), live.dir

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
