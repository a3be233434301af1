"""Which chunk to fetch next, and from where: a peer that holds it, the origin, or nobody yet (pure).

Fetchers of the same revision split the origin's work by rendezvous hashing: chunk ``c`` is read
from the origin by ``origin_owner(c, fetchers)``, the fetcher with the highest
``xxh3_64(path NUL index NUL name)``. Every fetcher computes the same owner from the same set, and
a fetcher joining or leaving moves only the chunks it wins or held. Everything else comes from
peers, rarest chunk first, each from the least busy holder. Origin reads go first to the chunks the
fetcher owns among every agent it knows of (``Board.known``: fetching or not yet), then in the order
of its own rendezvous weight, so one that has not yet seen the others fetch starts with chunks
nobody else will read. A chunk nobody holds or reads from
the origin (its owner is gone, slow to start, or sees another fetcher set) is taken from the
origin by anyone after ``Limits.orphan_grace`` seconds, so a lost peer costs time, never the fetch.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import xxhash

ChunkId = tuple[str, int]  # (file path, chunk index)


@dataclass(frozen=True, slots=True)
class PeerView:
    """What one peer said about this revision the last time we read its chunk map."""

    holds: frozenset[ChunkId] = frozenset()
    origin_inflight: frozenset[ChunkId] = frozenset()  # chunks it is reading from the origin now
    fetching: bool = False  # it fetches this revision itself, so it takes a share of the origin
    busy: int = 0  # our requests in flight to it


@dataclass(frozen=True, slots=True)
class Limits:
    per_peer: int = 2  # our requests in flight to one peer
    peer_slots: int = 8  # our peer transfers in flight in all (a fetch sets its --concurrency)
    origin_slots: int = 1  # our origin reads in flight while other fetchers share the work
    solo_origin_slots: int = 8  # ... and alone (a fetch sets its --concurrency: as fast as without peers)
    orphan_grace: float = 3.0  # seconds a chunk may be unclaimed before anyone takes it from the origin
    warmup: float = 2.0  # seconds a fetch whose first discovery found peers stays at origin_slots


@dataclass(frozen=True, slots=True)
class Step:
    """``peer`` (chunk from ``peer``), ``origin`` (chunk from the origin) or ``wait`` (nothing now)."""

    kind: str
    chunk: ChunkId | None = None
    peer: str | None = None


WAIT = Step("wait")


@lru_cache(maxsize=1 << 17)
def score(*parts: object) -> int:
    """The rendezvous weight of a tuple (stable across processes and machines)."""
    return xxhash.xxh3_64("\0".join(str(p) for p in parts).encode()).intdigest()


def origin_owner(chunk: ChunkId, fetchers: Collection[str]) -> str:
    """The fetcher that reads ``chunk`` from the origin: highest rendezvous weight wins."""
    return max(fetchers, key=lambda name: (score(chunk[0], chunk[1], name), name))


@dataclass
class Board:
    """One fetch's view: what we still need, what we have asked for, what each peer says."""

    me: str
    todo: list[ChunkId]  # in file order; done chunks are removed by the caller
    peers: dict[str, PeerView] = field(default_factory=dict)
    taken: set[ChunkId] = field(default_factory=set)  # chunks we are fetching now
    origin_busy: int = 0  # our origin reads in flight
    unclaimed_since: dict[ChunkId, float] = field(default_factory=dict)
    started: float | None = None  # when the fetch began (for the warm-up)
    resting: dict[str, float] = field(default_factory=dict)  # peer -> until when (it said busy)
    known: frozenset[str] = frozenset()  # every peer we know of, fetching or not (yet)
    _order: list[ChunkId] = field(default_factory=list, repr=False)
    _order_set: set[ChunkId] = field(default_factory=set, repr=False)
    _order_known: frozenset[str] = field(default=frozenset(), repr=False)  # ... the order was made for
    _index: dict[ChunkId, list[str]] = field(default_factory=dict, repr=False)
    _indexed: dict[str, frozenset[ChunkId]] = field(default_factory=dict, repr=False)  # as indexed
    _owners: dict[ChunkId, str] = field(default_factory=dict, repr=False)  # origin_owner, memoized
    _owners_of: tuple[str, ...] = field(default=(), repr=False)  # ... for this fetcher set

    def origin_order(self, chunks: Sequence[ChunkId]) -> list[ChunkId]:
        """The chunks we own among every agent we know of first, then our best-scoring ones (those
        we own in most larger fetcher sets), so a fetcher that has not seen the others fetch yet
        starts with work nobody else will repeat. (Computed again only when ``known`` changes.)"""
        if self._order_known != self.known or not set(chunks) <= self._order_set:
            everyone = sorted(self.known | {self.me})
            self._order = sorted(
                set(chunks) | set(self._order),
                key=lambda c: (origin_owner(c, everyone) != self.me, -score(c[0], c[1], self.me)),
            )
            self._order_set, self._order_known = set(self._order), self.known
        wanted = set(chunks)
        return [c for c in self._order if c in wanted]

    def holders_index(self) -> dict[ChunkId, list[str]]:
        """chunk -> peers holding it; kept up to date as peers' holdings grow (a peer's holdings
        usually only grow while a swarm runs: a peer that lost some, or left, rebuilds it)."""
        index, seen = self._index, self._indexed
        if seen.keys() - self.peers.keys():
            index, seen = self._rebuild()
        for name, view in self.peers.items():
            old = seen.get(name)
            if old is view.holds:
                continue
            if old is not None and not old <= view.holds:
                return self._rebuild()[0]
            for chunk in view.holds - old if old is not None else view.holds:
                index.setdefault(chunk, []).append(name)
            seen[name] = view.holds
        return index

    def _rebuild(self) -> tuple[dict[ChunkId, list[str]], dict[str, frozenset[ChunkId]]]:
        index: dict[ChunkId, list[str]] = {}
        for name, view in self.peers.items():
            for chunk in view.holds:
                index.setdefault(chunk, []).append(name)
        self._index, self._indexed = index, {name: view.holds for name, view in self.peers.items()}
        return self._index, self._indexed

    def fetchers(self) -> list[str]:
        return sorted({self.me, *(name for name, view in self.peers.items() if view.fetching)})

    def owner(self, chunk: ChunkId, fetchers: Sequence[str]) -> str:
        """``origin_owner(chunk, fetchers)``, remembered while the fetcher set stays the same."""
        key = tuple(fetchers)
        if key != self._owners_of:
            self._owners, self._owners_of = {}, key
        found = self._owners.get(chunk)
        if found is None:
            found = self._owners[chunk] = origin_owner(chunk, key)
        return found


def holders(chunk: ChunkId, peers: Mapping[str, PeerView]) -> list[str]:
    return [name for name, view in peers.items() if chunk in view.holds]


def claimed(chunk: ChunkId, peers: Mapping[str, PeerView]) -> bool:
    """Somebody holds it or is reading it from the origin."""
    return any(chunk in v.holds or chunk in v.origin_inflight for v in peers.values())


def next_step(board: Board, now: float, limits: Limits = Limits()) -> Step:
    """The next chunk to start (see the module docstring); updates ``unclaimed_since``.

    Our share of the origin comes first, on slots of its own: the origin's link is the one every
    fetcher waits on, so it must never idle while our workers copy from peers."""
    open_chunks = [c for c in board.todo if c not in board.taken]
    step = _from_origin(board, open_chunks, now, limits)
    if step is not None:
        return step
    if sum(view.busy for view in board.peers.values()) < limits.peer_slots:
        step = _from_peer(board, open_chunks, now, limits)
    return WAIT if step is None else step


def _from_origin(board: Board, open_chunks: Sequence[ChunkId], now: float, limits: Limits) -> Step | None:
    """The best-weighted open chunk that is ours to read from the origin, if an origin slot is free."""
    fetchers = board.fetchers()
    warming = board.started is not None and now - board.started < limits.warmup
    slots = limits.origin_slots if len(fetchers) > 1 or warming else limits.solo_origin_slots
    if board.origin_busy >= slots:
        return None
    inflight = {c for view in board.peers.values() for c in view.origin_inflight}
    held = board.holders_index()
    for chunk in board.origin_order(open_chunks):
        if chunk in held or chunk in inflight:  # somebody holds it or reads it from the origin
            board.unclaimed_since.pop(chunk, None)
            continue
        owner = board.owner(chunk, fetchers)
        if owner == board.me:
            return Step("origin", chunk)
        if board.peers[owner].origin_inflight:  # the owner is working through its share
            board.unclaimed_since.pop(chunk, None)
            continue
        since = board.unclaimed_since.setdefault(chunk, now)
        if now - since >= limits.orphan_grace:
            return Step("origin", chunk)
    return None


def _from_peer(board: Board, open_chunks: Sequence[ChunkId], now: float, limits: Limits) -> Step | None:
    """The rarest open chunk some peer with a free slot holds, from its least busy holder; a peer
    that said it is at its upload limit rests until ``board.resting`` says."""
    index = board.holders_index()
    resting = {name for name, until in board.resting.items() if until > now}
    best: tuple[tuple[int, int], ChunkId, list[str]] | None = None
    for chunk in open_chunks:
        names = index.get(chunk)
        if not names:
            continue
        rank = (len(names), -score(board.me, *chunk))
        if best is not None and rank >= best[0]:
            continue
        free = [n for n in names if board.peers[n].busy < limits.per_peer and n not in resting]
        if free:
            best = (rank, chunk, free)
    if best is None:
        return None
    _, chunk, free = best
    peer = min(free, key=lambda n: (board.peers[n].busy, -score(board.me, chunk[0], chunk[1], n)))
    return Step("peer", chunk, peer)
