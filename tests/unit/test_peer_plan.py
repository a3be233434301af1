"""Table tests of the peer planner: which chunk next, from which source, and the origin split."""

from __future__ import annotations

import itertools

import pytest

from agent.peers.plan import Board, Limits, PeerView, Step, next_step, origin_owner

A, B, C = ("m.bin", 0), ("m.bin", 1), ("m.bin", 2)
CHUNKS = [("m.bin", i) for i in range(256)]


def owned_by(name: str, fetchers: list[str]) -> tuple[str, int]:
    return next(c for c in CHUNKS if origin_owner(c, fetchers) == name)


def test_origin_owner_splits_the_work_evenly_and_every_fetcher_agrees() -> None:
    fetchers = [f"node-{i}" for i in range(16)]
    counts = {name: 0 for name in fetchers}
    for chunk in CHUNKS:
        owners = {origin_owner(chunk, list(order)) for order in (fetchers, fetchers[::-1])}
        assert len(owners) == 1  # the order a fetcher learned its peers in does not matter
        counts[owners.pop()] += 1
    assert sum(counts.values()) == 256 and min(counts.values()) >= 6 and max(counts.values()) <= 30


def test_a_joining_fetcher_moves_only_the_chunks_it_wins() -> None:
    before = [f"node-{i}" for i in range(8)]
    after = [*before, "node-new"]
    moved = [c for c in CHUNKS if origin_owner(c, before) != origin_owner(c, after)]
    assert moved and all(origin_owner(c, after) == "node-new" for c in moved)


ME = "me"
OTHER = "other"
BOTH = [ME, OTHER]

ROWS = [
    # (name, todo, peers, taken, origin_busy, now, expected)
    ("alone: the origin, best-weighted chunk first", [A, B, C], {}, set(), 0, 0.0, Step("origin", C)),
    ("alone: up to the solo slots", [A, B], {}, set(), 8, 0.0, Step("wait")),
    (
        "a peer holds it: from the peer, not the origin",
        [A],
        {OTHER: PeerView(holds=frozenset({A}), fetching=True)},
        set(),
        0,
        0.0,
        Step("peer", A, OTHER),
    ),
    (
        "the rarest held chunk first",
        [A, B],
        {
            "p1": PeerView(holds=frozenset({A, B})),
            "p2": PeerView(holds=frozenset({A})),
        },
        set(),
        0,
        0.0,
        Step("peer", B, "p1"),
    ),
    (
        "the least busy holder",
        [A],
        {"p1": PeerView(holds=frozenset({A}), busy=1), "p2": PeerView(holds=frozenset({A}))},
        set(),
        0,
        0.0,
        Step("peer", A, "p2"),
    ),
    (
        "a held chunk whose holders are all at their limit is awaited, not read from the origin again",
        [A],
        {"p1": PeerView(holds=frozenset({A}), busy=2)},
        set(),
        0,
        0.0,
        Step("wait"),
    ),
    (
        "a chunk already taken is not started twice",
        [A],
        {},
        {A},
        1,
        0.0,
        Step("wait"),
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_next_step(row: tuple[object, ...]) -> None:
    _, todo, peers, taken, busy, now, expected = row
    board = Board(ME, list(todo), dict(peers), set(taken), busy)  # type: ignore[call-overload, arg-type]
    assert next_step(board, now) == expected  # type: ignore[arg-type]


def test_fetchers_split_the_origin_chunks_the_other_owns_are_awaited() -> None:
    mine, theirs = owned_by(ME, BOTH), owned_by(OTHER, BOTH)
    board = Board(ME, [theirs, mine], {OTHER: PeerView(fetching=True)})
    assert next_step(board, 0.0) == Step("origin", mine)
    board.taken.add(mine)
    board.origin_busy = 1
    assert next_step(board, 0.0) == Step("wait")  # theirs: OTHER reads it from the origin


def test_an_orphaned_chunk_is_taken_from_the_origin_after_the_grace() -> None:
    theirs = owned_by(OTHER, BOTH)
    board = Board(ME, [theirs], {OTHER: PeerView(fetching=True)})
    limits = Limits(orphan_grace=3.0)
    assert next_step(board, 10.0, limits) == Step("wait")
    assert next_step(board, 12.9, limits) == Step("wait")
    assert next_step(board, 13.0, limits) == Step("origin", theirs)


def test_a_busy_owner_is_waited_for_an_idle_one_is_not() -> None:
    theirs = owned_by(OTHER, BOTH)
    other_chunk = next(c for c in CHUNKS if c != theirs)
    working = PeerView(origin_inflight=frozenset({other_chunk}), fetching=True)
    board = Board(ME, [theirs], {OTHER: working})
    assert next_step(board, 0.0) == Step("wait")
    assert next_step(board, 1000.0) == Step("wait")
    board.peers[OTHER] = PeerView(fetching=True)  # idle: it reads nothing from the origin
    assert next_step(board, 1000.0) == Step("wait")
    assert next_step(board, 1003.0) == Step("origin", theirs)


def test_a_chunk_the_owner_is_reading_is_never_an_orphan() -> None:
    theirs = owned_by(OTHER, BOTH)
    board = Board(ME, [theirs], {OTHER: PeerView(origin_inflight=frozenset({theirs}), fetching=True)})
    assert next_step(board, 0.0) == Step("wait")
    assert next_step(board, 1000.0) == Step("wait")


def test_origin_slots_shrink_while_others_share_the_work() -> None:
    mine = [c for c in CHUNKS if origin_owner(c, BOTH) == ME][:5]
    board = Board(ME, mine, {OTHER: PeerView(fetching=True)}, origin_busy=2)
    assert next_step(board, 0.0, Limits(origin_slots=2)) == Step("wait")
    board.origin_busy = 1
    assert next_step(board, 0.0, Limits(origin_slots=2)).kind == "origin"


def test_simulated_swarm_reads_each_chunk_from_the_origin_once() -> None:
    """Four fetchers, stepping in turn, finish with every chunk read from the origin exactly once."""
    names = [f"n{i}" for i in range(4)]
    chunks = CHUNKS[:64]
    boards = {n: Board(n, list(chunks)) for n in names}
    holds: dict[str, set[tuple[str, int]]] = {n: set() for n in names}
    origin_reads: list[tuple[str, int]] = []
    for tick in itertools.count():
        assert tick < 10_000
        if all(not b.todo for b in boards.values()):
            break
        for n, board in boards.items():
            board.peers = {
                m: PeerView(holds=frozenset(holds[m]), fetching=bool(boards[m].todo)) for m in names if m != n
            }
            step = next_step(board, float(tick))
            if step.kind == "wait":
                continue
            assert step.chunk is not None
            if step.kind == "origin":
                origin_reads.append(step.chunk)
            holds[n].add(step.chunk)
            board.todo.remove(step.chunk)
    assert sorted(origin_reads) == sorted(chunks)
    assert all(holds[n] == set(chunks) for n in names)


def test_a_fetch_that_knows_of_peers_warms_up_before_going_solo() -> None:
    board = Board(ME, CHUNKS[:20], origin_busy=2, started=100.0)
    assert next_step(board, 101.0, Limits(origin_slots=2, warmup=2.0)) == Step("wait")
    assert next_step(board, 102.0, Limits(origin_slots=2, warmup=2.0)).kind == "origin"


def test_a_fetcher_alone_in_its_view_starts_with_chunks_it_owns_in_the_full_set() -> None:
    """Eight fetchers that have not seen each other yet each read their first 4 chunks: few overlap."""
    names = [f"n{i}" for i in range(8)]
    firsts = {}
    for name in names:
        board = Board(name, list(CHUNKS))
        picks = []
        for _ in range(4):
            step = next_step(board, 0.0)
            assert step.chunk is not None
            picks.append(step.chunk)
            board.taken.add(step.chunk)
        firsts[name] = picks
    owned = sum(origin_owner(c, names) == n for n, picks in firsts.items() for c in picks)
    assert owned >= 28  # of 32 first reads, nearly all are the reader's own share anyway


def test_a_fetcher_that_knows_its_peers_reads_only_its_own_share_before_it_sees_them_fetch() -> None:
    """The same eight, each knowing the others' names (the directory) but not yet that they fetch:
    every first read is the reader's share of the full set, so none is repeated when they meet."""
    names = [f"n{i}" for i in range(8)]
    for name in names:
        board = Board(name, list(CHUNKS), known=frozenset(names) - {name})
        share = sum(origin_owner(c, names) == name for c in CHUNKS)
        for _ in range(share):
            step = next_step(board, 0.0)
            assert step.kind == "origin" and step.chunk is not None
            assert origin_owner(step.chunk, names) == name
            board.taken.add(step.chunk)
        step = next_step(board, 0.0)  # alone in its view: then the others' shares, still from the origin
        assert step.kind == "origin" and step.chunk is not None and origin_owner(step.chunk, names) != name


def test_a_peer_that_said_busy_rests_and_another_holder_is_asked() -> None:
    peers = {"p1": PeerView(holds=frozenset({A})), "p2": PeerView(holds=frozenset({A}), busy=1)}
    board = Board(ME, [A], dict(peers))
    assert next_step(board, 0.0) == Step("peer", A, "p1")
    board.resting["p1"] = 0.5
    assert next_step(board, 0.1) == Step("peer", A, "p2")
    board.peers["p2"] = PeerView(holds=frozenset({A}), busy=2)
    assert next_step(board, 0.1) == Step("wait")  # p1 rests, p2 is at its limit
    assert next_step(board, 0.6) == Step("peer", A, "p1")


def test_our_origin_share_is_started_even_while_peer_chunks_are_on_offer() -> None:
    mine = owned_by(ME, BOTH)
    held = next(c for c in CHUNKS if c != mine)
    board = Board(ME, [held, mine], {OTHER: PeerView(holds=frozenset({held}), fetching=True)})
    assert next_step(board, 0.0) == Step("origin", mine)  # the origin's link must never idle
    board.taken.add(mine)
    board.origin_busy = 1
    assert next_step(board, 0.0) == Step("peer", held, OTHER)


def test_peer_transfers_stop_at_the_peer_slots() -> None:
    board = Board(ME, [A, B], {"p1": PeerView(holds=frozenset({A, B}), busy=1)})
    assert next_step(board, 0.0, Limits(peer_slots=1)) == Step("wait")
    assert next_step(board, 0.0, Limits(peer_slots=2)).kind == "peer"


def test_the_holders_index_follows_growing_and_shrinking_holdings() -> None:
    board = Board(ME, [A, B, C], {"p1": PeerView(holds=frozenset({A}))})
    assert board.holders_index() == {A: ["p1"]}
    board.peers["p1"] = PeerView(holds=frozenset({A, B}))
    board.peers["p2"] = PeerView(holds=frozenset({B}))
    assert {c: sorted(n) for c, n in board.holders_index().items()} == {A: ["p1"], B: ["p1", "p2"]}
    board.peers["p1"] = PeerView(holds=frozenset({C}))  # shrank: rebuilt
    del board.peers["p2"]
    assert board.holders_index() == {C: ["p1"]}
