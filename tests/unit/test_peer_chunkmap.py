"""Table tests of chunk maps: which of a peer's chunks count, which digest a peer's chunk must have,
and that junk is refused."""

from __future__ import annotations

import pytest

from agent.peers.chunkmap import BadMap, ChunkMap, FileId, expected_digest, map_from_json, usable_chunks

D1, D2 = "1" * 32, "2" * 32
OURS = {"a.bin": FileId(10, "etag-a", "v1", "sha256:" + "0" * 64), "b.bin": FileId(5, "etag-b")}
THEIRS = {("a.bin", 0): D1, ("b.bin", 0): D2}


def peer_map(revision: str = "r1", chunk_bytes: int = 4, files: dict[str, FileId] | None = None) -> ChunkMap:
    return ChunkMap("m", revision, chunk_bytes, "ready", {**OURS, **(files or {})}, THEIRS)


USABLE = [
    ("same revision, chunk size and files: all", peer_map(), {("a.bin", 0), ("b.bin", 0)}),
    ("another revision: none", peer_map(revision="r2"), set()),
    ("another chunk size: none", peer_map(chunk_bytes=8), set()),
    (
        "a file of another size: not its chunks",
        peer_map(files={"a.bin": FileId(11, "etag-a", "v1")}),
        {("b.bin", 0)},
    ),
    (
        "a file of another version: not its chunks",
        peer_map(files={"b.bin": FileId(5, "etag-b", "v2")}),
        {("a.bin", 0)},
    ),
    ("a file of another ETag: not its chunks", peer_map(files={"b.bin": FileId(5, "other")}), {("a.bin", 0)}),
    (
        "a file with another origin checksum: not its chunks",
        peer_map(files={"a.bin": FileId(10, "etag-a", "v1", "sha256:" + "f" * 64)}),
        {("b.bin", 0)},
    ),
]


@pytest.mark.parametrize(("name", "theirs", "want"), USABLE, ids=[r[0] for r in USABLE])
def test_usable_chunks(name: str, theirs: ChunkMap, want: set[tuple[str, int]]) -> None:
    assert set(usable_chunks(theirs, "r1", 4, OURS)) == want


C = ("a.bin", 0)
EXPECTED = [
    ("the sole holder's own digest (first hop after the origin)", "p", {"p": {C: D1}}, D1),
    ("another holder agrees: its digest", "p", {"p": {C: D1}, "q": {C: D1}}, D1),
    ("holders disagree: contested, nobody's copy", "p", {"p": {C: D1}, "q": {C: D2}}, None),
    ("a liar outvoted by nobody: still contested", "q", {"p": {C: D1}, "q": {C: D2}}, None),
    ("the sender does not advertise it: no digest", "r", {"p": {C: D1}}, None),
]


@pytest.mark.parametrize(("name", "sender", "advertised", "want"), EXPECTED, ids=[r[0] for r in EXPECTED])
def test_expected_digest(
    name: str, sender: str, advertised: dict[str, dict[tuple[str, int], str]], want: str | None
) -> None:
    assert expected_digest(C, sender, advertised) == want


def test_a_map_survives_its_json() -> None:
    m = ChunkMap("m", "r1", 4, "fetching", OURS, THEIRS, frozenset({("b.bin", 1)}))
    assert map_from_json(m.as_json()) == m


JUNK = [
    ("not an object", []),
    ("no files", {"id": "m", "revision": "r", "chunk_bytes": 4, "state": "ready"}),
    ("a short digest", {**peer_map().as_json(), "files": {"a.bin": {"size": 1, "chunks": {"0": "ab"}}}}),
    ("an unknown state", {**peer_map().as_json(), "state": "hacked"}),
    ("a non-numeric index", {**peer_map().as_json(), "files": {"a.bin": {"size": 1, "chunks": {"x": D1}}}}),
]


@pytest.mark.parametrize(("name", "data"), JUNK, ids=[r[0] for r in JUNK])
def test_junk_is_refused(name: str, data: object) -> None:
    with pytest.raises(BadMap):
        map_from_json(data)
