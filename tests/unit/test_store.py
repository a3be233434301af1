"""Pure parts of the store and the fetch plan: digests, chunking, record round trip, views."""

from __future__ import annotations

import pytest
import xxhash

from agent.fetch.chunks import RetryPolicy, chunk_plan
from agent.lifecycle.views import record_view
from agent.store.files import RemoteFile
from locality.digests import chunk_count, file_digest
from locality.records import FileRecord, ModelRecord, record_from_json, record_to_json


@pytest.mark.parametrize(
    ("size", "chunk", "want"),
    [
        pytest.param(0, 4, 0, id="empty"),
        pytest.param(1, 4, 1, id="tiny"),
        pytest.param(4, 4, 1, id="exact"),
        pytest.param(5, 4, 2, id="one-over"),
    ],
)
def test_chunk_count(size: int, chunk: int, want: int) -> None:
    assert chunk_count(size, chunk) == want


def test_file_digest_is_xxh3_128_over_chunk_digests() -> None:
    data = bytes(range(256)) * 10
    chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    digests = [xxhash.xxh3_128(c).hexdigest() for c in chunks]
    want = xxhash.xxh3_128(b"".join(xxhash.xxh3_128(c).digest() for c in chunks)).hexdigest()
    assert file_digest(digests) == want
    assert file_digest(digests[::-1]) != want


def test_chunk_plan_order_and_unranged_files() -> None:
    files = [
        RemoteFile("a", 10, None, "a"),
        RemoteFile("b", 0, None, "b"),
        RemoteFile("c", 7, None, "c", ranges=False),
    ]
    assert [(f.path, i) for f, i in chunk_plan(files, 4)] == [("a", 0), ("a", 1), ("a", 2), ("c", -1)]


@pytest.mark.parametrize("attempt", [0, 1, 5, 30])
def test_retry_delay_bounded(attempt: int) -> None:
    policy = RetryPolicy(attempts=6, base=0.5, cap=10.0)
    delay = policy.delay(attempt)
    assert min(10.0, 0.5 * 2**attempt) * 0.5 <= delay <= min(10.0, 0.5 * 2**attempt)


RECORD = ModelRecord(
    id="0123456789abcdef",
    uri="s3://b/m",
    label="model-locality.io/m.01234567",
    files=(FileRecord("w.bin", 5, "ab" * 16, 4, ("cd" * 16, "ef" * 16), '"e"'),),
    total_bytes=5,
    etag='"e"',
    fetched_at=1.5,
    last_used=2.5,
    pins=frozenset({"pod/a", "dist/b"}),
)


def test_record_round_trip() -> None:
    data = record_to_json(RECORD)
    assert data["digest_scheme"] == "xxh3_128-of-chunk-xxh3_128"
    assert record_from_json(data) == RECORD


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param({"digest_scheme": "sha256"}, id="unknown-scheme"),
        pytest.param({"files": [{"path": "x"}]}, id="file-missing-fields"),
    ],
)
def test_bad_record_refused(broken: dict[str, object]) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        record_from_json({**record_to_json(RECORD), **broken})


def test_record_view_is_the_rest_object() -> None:
    from pathlib import Path

    view = record_view(RECORD, Path("/cache/models/0123456789abcdef"))
    assert {
        k: view[k] for k in ("id", "uri", "label", "state", "bytes_total", "bytes_done", "path", "error")
    } == {
        "id": RECORD.id,
        "uri": RECORD.uri,
        "label": RECORD.label,
        "state": "ready",
        "bytes_total": 5,
        "bytes_done": 5,
        "path": "/cache/models/0123456789abcdef",
        "error": None,
    }
    assert view["pins"] == ["dist/b", "pod/a"]
