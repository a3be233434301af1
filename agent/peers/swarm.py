"""A fetch that takes each chunk from the best source: a peer that holds it verified, else the origin.

``SwarmFetcher`` is a ``Fetcher`` (same staging, journal, data path and origin retries) whose
workers ask the planner (``agent.peers.plan``) what to do next. One follower per known peer keeps
its chunk map current by long-polling for deltas (``agent.peers.server``); a peer's chunk counts
only for the same revision, chunk size and origin file (``agent.peers.chunkmap``). Each chunk
from a peer is hashed in-stream and must equal the digest another peer advertises
(``expected_digest``); a peer that sends a bad chunk is dropped for this fetch, logged and
counted, and the chunk comes from elsewhere. Peers that
time out or fail twice are dropped too; what they held or were reading falls back to the origin.
While it runs, this fetch's verified chunks are served to others (``Holdings``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from agent.fetch.chunks import Fetcher
from agent.fetch.sources.base import Source, SourceError
from agent.fetch.sources.transfer import ChunkJob, RangeReader, Stopped
from agent.peers.chunkmap import BadMap, FileId, expected_digest, map_from_json, map_version, usable_chunks
from agent.peers.holdings import Holdings, LiveFetch
from agent.peers.metrics import PeerMetrics
from agent.peers.plan import Board, ChunkId, Limits, PeerView, next_step
from agent.peers.source import PeerSource
from agent.store.files import RemoteFile
from agent.store.staging import ChunkKey, Staging
from locality.identity import ModelRef

log = logging.getLogger(__name__)


class Directory(Protocol):
    """Where peers are found (``agent.peers.directory``): names and base URLs of agents that hold
    or fetch a model, and this agent's own name among them."""

    me: str

    async def peers(self, model_id: str, revision: str) -> dict[str, str]: ...

    async def joined(self, model_id: str, revision: str) -> dict[str, str] | None:
        """Announce our fetch; the peers that may serve or share it ({}: nobody, None: unknown)."""
        ...


@dataclass
class Tally:
    """Where one fetch's bytes came from."""

    origin_bytes: int = 0
    peer_bytes: dict[str, int] = field(default_factory=dict)
    bad_chunks: int = 0
    dropped: set[str] = field(default_factory=set)

    def line(self) -> str:
        peers = sum(self.peer_bytes.values())
        return (
            f"{self.origin_bytes} bytes from the origin, {peers} from {len(self.peer_bytes)} peers"
            f", {self.bad_chunks} bad chunks, {len(self.dropped)} peers dropped"
        )


@dataclass
class PeerNet:
    """What a fetch needs to use peers (one per agent)."""

    directory: Directory
    token: Callable[[], str]
    holdings: Holdings
    metrics: PeerMetrics
    limits: Limits = field(default_factory=Limits)
    peer_timeout: float = 10.0  # seconds without a byte from a peer before its transfer fails
    poll_seconds: float = 0.5
    map_wait: float = 10.0  # seconds a peer may hold a map request until something changes
    busy_rest: float = 0.5  # seconds a peer that said busy (503) is not asked
    map_answers: float = 10.0  # map answers a second this agent takes from all its peers together
    rediscover_seconds: float = 15.0  # re-list peers this often; every second for a fetch's first 10 s
    tallies: dict[str, Tally] = field(default_factory=dict)  # model id -> its last fetch's tally


def movers(net: PeerNet) -> Callable[..., SwarmFetcher]:
    """The chunk movers of an agent with peers (``agent.fetch.run.Movers``): one ``SwarmFetcher``
    per fetch, whose tally lands in ``net.tallies``."""

    def make(ref: ModelRef, revision: str, source: Source, staging: Staging, **kwargs: Any) -> SwarmFetcher:
        fetcher = SwarmFetcher(source, staging, net=net, model_id=ref.id, revision=revision, **kwargs)
        net.tallies[ref.id] = fetcher.tally
        return fetcher

    return make


class SwarmFetcher(Fetcher):
    """A ``Fetcher`` over the origin and peers (see the module docstring)."""

    def __init__(
        self,
        source: Source,
        staging: Staging,
        *,
        net: PeerNet,
        model_id: str,
        revision: str,
        **kwargs: object,
    ) -> None:
        super().__init__(source, staging, **kwargs)  # type: ignore[arg-type]
        self.net, self.model_id, self.revision = net, model_id, revision
        self.tally = Tally()
        self._urls: dict[str, str] = {}
        self._advertised: dict[str, dict[ChunkId, str]] = {}
        self._failures: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._no_peers: set[ChunkId] = set()  # contested chunks: from the origin only
        self._seen: dict[str, float] = {}  # peer -> when its chunk map was last read
        self._board = Board("", [])
        # Alone, origin reads go to --concurrency at once (as fast as without peers); peer
        # transfers take up to --concurrency workers and origin reads have workers of their own.
        self.limits = dataclasses.replace(
            net.limits, solo_origin_slots=self.concurrency, peer_slots=self.concurrency
        )
        self.workers = self.limits.peer_slots + self.limits.origin_slots

    async def run(self, files: Sequence[RemoteFile], done: dict[ChunkKey, str]) -> dict[ChunkKey, str]:
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="swarm")
        ours = {f.path: FileId(f.size, f.etag, f.version, f.checksum) for f in files}
        live = LiveFetch(self.model_id, self.revision, self.chunk_bytes, ours, self.staging.files_dir, done)
        complete = False
        try:
            await loop.run_in_executor(pool, self._open_files, files)
            bad = await loop.run_in_executor(pool, self._recheck, files, dict(done))
            if bad:
                self.staging.forget(bad, done)
            by_path = {f.path: f for f in files}
            for path, index in done:
                self._on_bytes(self._chunk_len(by_path[path], index))
            todo = [
                (f.path, i)
                for f in files
                for i in range(-(-f.size // self.chunk_bytes))
                if (f.path, i) not in done
            ]
            board = self._board = Board(self.net.directory.me, todo)
            self.net.holdings.start(live)
            first = await self._announce()
            board.known = frozenset(self._urls)
            await self._swarm(pool, board, by_path, ours, (live, done), first=first)
            complete = True
        finally:
            # Complete: served from staging until the commit is on disk (``Holdings.settle``).
            (self.net.holdings.settle if complete else self.net.holdings.finish)(self.model_id)
            self._halt()
            pool.shutdown(wait=True)
            for reader in self._readers:
                reader.close()
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        log.info("fetched model %s revision %s: %s", self.model_id, self.revision, self.tally.line())
        return done

    async def _swarm(
        self,
        pool: ThreadPoolExecutor,
        board: Board,
        by_path: dict[str, RemoteFile],
        ours: dict[str, FileId],
        into: tuple[LiveFetch, dict[ChunkKey, str]],
        *,
        first: dict[str, str] | None,
    ) -> None:
        timeout = aiohttp.ClientTimeout(total=max(1.0, self.net.poll_seconds * 4))
        async with aiohttp.ClientSession(timeout=timeout) as http:
            poller = asyncio.create_task(self._poll(http, board, ours, listed=first is not None))
            try:
                if first != {}:
                    # Others fetch or hold the revision, or we cannot tell: agents starting
                    # together may not see each other yet, so share the origin for a moment
                    # (Limits.warmup) before reading alone at full concurrency.
                    await self._first_round(board)
                    board.started = asyncio.get_running_loop().time()
                workers = [
                    asyncio.create_task(self._pull(pool, board, by_path, into))
                    for _ in range(min(self.workers, max(1, len(board.todo))))
                ]
                try:
                    await asyncio.gather(*workers)
                finally:
                    self._halt()
                    for task in workers:
                        task.cancel()
                    await asyncio.gather(*workers, return_exceptions=True)
            finally:
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)

    async def _announce(self) -> dict[str, str] | None:
        """Tell the directory we fetch; the peers it found (seeded into ``_urls``), None: unknown."""
        try:
            found = await self.net.directory.joined(self.model_id, self.revision)
        except Exception as exc:  # the directory is a help, never a reason to fail
            log.warning("model %s: cannot announce the fetch to peers: %s", self.model_id, exc)
            return None
        if found is not None:
            me = self.net.directory.me
            self._urls.update({n: u.rstrip("/") for n, u in found.items() if n != me})
            found = {n: u for n, u in found.items() if n != me}
        return found

    async def _first_round(self, board: Board) -> None:
        """Wait for the first poll; when peers are known but none fetches yet, or a fetcher has
        not started reading (its origin reads are not in its map yet), one more, so that agents
        starting together see each other's work before choosing their own. The second is short
        (``poll_seconds``): a peer that starts meanwhile says so at once (its held 404 turns into
        its map), and a fetch among idle peers should not wait for nothing."""
        for wait in (self.net.poll_seconds * 4, self.net.poll_seconds):
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            fetching = [view for view in board.peers.values() if view.fetching]
            if not self._urls or (fetching and all(v.origin_inflight or v.holds for v in fetching)):
                return

    async def _pull(
        self,
        pool: ThreadPoolExecutor,
        board: Board,
        by_path: dict[str, RemoteFile],
        into: tuple[LiveFetch, dict[ChunkKey, str]],
    ) -> None:
        live, done = into
        loop = asyncio.get_running_loop()
        origin = RangeReader(
            self._stop, timeout=self.retry.read_timeout, connect_timeout=self.retry.connect_timeout
        )
        peers = RangeReader(self._stop, timeout=self.net.peer_timeout, connect_timeout=self.net.peer_timeout)
        self._readers += [origin, peers]
        while board.todo:
            step = next_step(board, loop.time(), self.limits)
            if step.kind == "wait" or step.chunk is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)  # orphans are timed in seconds
                continue
            chunk = step.chunk
            file = by_path[chunk[0]]
            job = self._job(file, chunk[1])
            board.taken.add(chunk)
            try:
                if step.kind == "peer" and step.peer is not None:
                    ok = await self._busy(
                        board, step.peer, self._from_peer(pool, peers, file, job, (chunk, step.peer))
                    )
                else:
                    live.origin_inflight.add(chunk)
                    live.changed()
                    board.origin_busy += 1
                    try:
                        ok = await self._from_origin(pool, origin, file, chunk, job)
                    finally:
                        board.origin_busy -= 1
                        live.origin_inflight.discard(chunk)
                if ok:
                    await self._finish(pool, file, chunk[1], job, done)
                    board.todo.remove(chunk)
                live.changed()
            finally:
                board.taken.discard(chunk)
                self._wake.set()

    async def _busy(self, board: Board, peer: str, work: Awaitable[bool]) -> bool:
        view = board.peers.get(peer)
        if view is not None:
            board.peers[peer] = dataclasses.replace(view, busy=view.busy + 1)
        try:
            return await work
        finally:
            view = board.peers.get(peer)
            if view is not None:
                board.peers[peer] = dataclasses.replace(view, busy=max(0, view.busy - 1))

    async def _from_origin(
        self, pool: ThreadPoolExecutor, reader: RangeReader, file: RemoteFile, chunk: ChunkId, job: ChunkJob
    ) -> bool:
        """The origin path of ``Fetcher``: retries with back-off, resuming within the chunk."""
        loop = asyncio.get_running_loop()
        attempt = 0

        def count(n: int) -> None:
            self.tally.origin_bytes += n
            self.net.metrics.origin_bytes.inc(n)
            self._on_bytes(n)

        while True:
            before = job.received
            try:
                target = await loop.run_in_executor(pool, self.source.target, file)
                await loop.run_in_executor(pool, reader.fetch, target, job, file.etag, count)
                return True
            except SourceError as exc:
                if exc.permanent:
                    raise
                attempt = 0 if job.received > before else attempt + 1
                if attempt >= self.retry.attempts:
                    raise SourceError(
                        f"{exc.message} (gave up after {attempt} tries)", permanent=False
                    ) from exc
                log.warning(
                    "retrying %s chunk %d after try %d: %s", file.path, chunk[1], attempt, exc.message
                )
                await asyncio.sleep(self.retry.delay(attempt))

    async def _from_peer(
        self,
        pool: ThreadPoolExecutor,
        reader: RangeReader,
        file: RemoteFile,
        job: ChunkJob,
        what: tuple[ChunkId, str],
    ) -> bool:
        """One try of chunk ``what[0]`` from peer ``what[1]``; False (the chunk stays to do) if it fails."""
        chunk, peer = what
        if chunk not in self._advertised.get(peer, {}):
            return False  # a stale view: the peer was dropped or no longer has it
        want = expected_digest(chunk, peer, self._advertised)
        if want is None:
            self._contested(chunk)
            return False
        target = PeerSource(self._urls[peer], self.model_id, self.revision, self.net.token).target(file)
        job.restart()
        try:
            await asyncio.get_running_loop().run_in_executor(
                pool, reader.fetch, target, job, None, self._on_bytes
            )
        except (SourceError, Stopped, OSError) as exc:
            self._on_bytes(-job.received)
            if self._stop.is_set():
                raise
            busy = isinstance(exc, SourceError) and "HTTP 503" in exc.message
            if busy:  # at its upload limit: ask others for a moment rather than again at once
                self._board.resting[peer] = asyncio.get_running_loop().time() + self.net.busy_rest
            self._failed(peer, "busy" if busy else f"transfer failed: {exc}")
            job.restart()
            return False
        if job.hasher.hexdigest() != want:
            self._on_bytes(-job.received)
            self.tally.bad_chunks += 1
            self.net.metrics.peer_errors.labels("digest").inc()
            self._drop(peer, f"chunk {file.path}#{chunk[1]} did not match its digest")
            job.restart()
            return False
        self.tally.peer_bytes[peer] = self.tally.peer_bytes.get(peer, 0) + job.received
        self.net.metrics.peer_bytes.labels("received").inc(job.received)
        self._failures.pop(peer, None)
        return True

    def _contested(self, chunk: ChunkId) -> None:
        """Peers disagree about a chunk's digest: nobody's copy of it is used, the origin's is."""
        self._no_peers.add(chunk)
        for chunks in self._advertised.values():
            chunks.pop(chunk, None)
        for name, view in self._board.peers.items():
            self._board.peers[name] = dataclasses.replace(view, holds=view.holds - {chunk})

    def _failed(self, peer: str, why: str) -> None:
        if why == "busy":
            return
        self.net.metrics.peer_errors.labels("transfer").inc()
        self._failures[peer] = self._failures.get(peer, 0) + 1
        if self._failures[peer] >= 2:
            self._drop(peer, why)

    def _drop(self, peer: str, why: str) -> None:
        if peer not in self.tally.dropped:
            log.warning("model %s: dropping peer %s for this fetch: %s", self.model_id, peer, why)
        self.tally.dropped.add(peer)
        self._advertised.pop(peer, None)
        self._board.peers.pop(peer, None)

    async def _poll(
        self, http: aiohttp.ClientSession, board: Board, ours: dict[str, FileId], *, listed: bool
    ) -> None:
        """Follow every known peer's chunk map (``_follow``, one task each); re-list peers every
        second for the fetch's first 10 s, then every ``rediscover_seconds`` (``listed``: just done)."""
        started = time.monotonic()
        discovered = started if listed else -1e18
        followers: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                now = time.monotonic()
                young = now - started < 10.0  # agents starting together label themselves a moment apart
                if now - discovered >= (1.0 if young else self.net.rediscover_seconds):
                    discovered = now
                    try:
                        found = await self.net.directory.peers(self.model_id, self.revision)
                        self._urls.update(
                            {n: u.rstrip("/") for n, u in found.items() if n != self.net.directory.me}
                        )
                        board.known = frozenset(self._urls)
                    except Exception as exc:  # the directory is a help, never a reason to fail
                        log.warning("model %s: cannot list peers: %s", self.model_id, exc)
                for name in self._urls:
                    if name not in followers and name not in self.tally.dropped:
                        followers[name] = asyncio.create_task(self._follow(http, name, board, ours))
                await asyncio.sleep(1.0 if young else self.net.poll_seconds * 4)
        finally:
            for task in followers.values():
                task.cancel()
            await asyncio.gather(*followers.values(), return_exceptions=True)

    async def _follow(
        self, http: aiohttp.ClientSession, name: str, board: Board, ours: dict[str, FileId]
    ) -> None:
        """Keep ``board.peers[name]`` current: ask for what changed since the map's version, the
        peer holding the question until something does (``agent.peers.server``). A quiet peer's
        news comes at once; a busy one's in batches, at most one answer per ``_gap`` seconds, so
        that an agent takes about ``map_answers`` answers a second however many peers it follows."""
        since: str | None = None
        absent = False  # it said it does not hold the revision: ask it to say when it starts
        while name not in self.tally.dropped:
            asked = time.monotonic()
            try:
                since, changed = await self._read_map(http, name, board, ours, since, arrival=absent)
            except _NoMap as exc:
                silent = time.monotonic() - self._seen.get(name, -1e18)  # after the read: it may have waited
                if name not in self._advertised or silent > self.net.peer_timeout:
                    board.peers.pop(name, None)  # holds nothing, or gone: its share moves to others
                    self._advertised.pop(name, None)
                # A first 404, or one that waited (the peer long-polls for the fetch's start), is
                # asked again at once, waiting; any other miss after a pause.
                waited = time.monotonic() - asked >= self.net.map_wait / 2
                again = exc.absent and (not absent or waited)
                since, absent = None, exc.absent
                self._wake.set()
                await asyncio.sleep(0 if again else self.net.poll_seconds)
                continue
            absent = False
            if changed:
                self._wake.set()
            await asyncio.sleep(self._gap())
        board.peers.pop(name, None)

    def _gap(self) -> float:
        following = sum(1 for name in self._urls if name not in self.tally.dropped)
        return max(self.net.poll_seconds, following / self.net.map_answers)

    async def _read_map(
        self,
        http: aiohttp.ClientSession,
        name: str,
        board: Board,
        ours: dict[str, FileId],
        since: str | None,
        *,
        arrival: bool = False,
    ) -> tuple[str | None, bool]:
        """One map request; the version to ask from next and whether the view changed (``_NoMap``:
        the peer does not hold the revision, or gave no usable answer). With ``since`` the peer
        holds the question until the map changes; with ``arrival``, until the revision's fetch
        starts there."""
        url = f"{self._urls[name]}/v1/peer/models/{self.model_id}"
        params = {"revision": self.revision}
        if since is not None:
            params.update(since=since)
        waits = since is not None or arrival
        if waits:
            params.update(wait=f"{self.net.map_wait:g}")
        timeout = aiohttp.ClientTimeout(total=self.net.peer_timeout + (self.net.map_wait if waits else 0))
        try:
            async with http.get(
                url, params=params, headers={"Authorization": f"Bearer {self.net.token()}"}, timeout=timeout
            ) as resp:
                if resp.status == 304:
                    self._seen[name] = time.monotonic()
                    return since, False
                if resp.status == 404:
                    self._advertised.pop(name, None)
                    raise _NoMap(absent=True)
                if resp.status != 200:
                    raise BadMap(f"HTTP {resp.status}")
                data = await resp.json()
                theirs = map_from_json(data)
        except (aiohttp.ClientError, TimeoutError, BadMap, ValueError) as exc:
            # A slow answer keeps the last view until peer_timeout (a busy peer is not a gone one).
            self.net.metrics.peer_errors.labels("map").inc()
            log.debug("model %s: no chunk map from %s: %s", self.model_id, name, exc)
            raise _NoMap() from exc
        version, delta = map_version(data)
        usable = usable_chunks(theirs, self.revision, self.chunk_bytes, ours)
        for chunk in self._no_peers & usable.keys():
            del usable[chunk]
        if delta and name in self._advertised:
            self._advertised[name].update(usable)
        else:
            self._advertised[name] = usable
        inflight = frozenset(c for c in theirs.origin_inflight if c[0] in ours)
        old = board.peers.get(name)
        holds = old.holds if old is not None and delta and not usable else frozenset(self._advertised[name])
        board.peers[name] = PeerView(
            holds=holds,
            origin_inflight=inflight,
            fetching=theirs.state == "fetching",
            busy=old.busy if old is not None else 0,
        )
        self._seen[name] = time.monotonic()
        return version, True


class _NoMap(Exception):
    """A peer gave no usable chunk map this time (``absent``: it said it does not hold the revision)."""

    def __init__(self, *, absent: bool = False) -> None:
        super().__init__()
        self.absent = absent
