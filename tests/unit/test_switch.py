"""Names and records of a revision switch (agent.store.revswitch) and the record's ``dir`` round trip."""

from __future__ import annotations

import pytest

from agent.store.revswitch import new_dir, same_revision, superseded, unique
from locality.records import ModelRecord, record_from_json, record_to_json

ID = "0123456789abcdef"


def record(**changes: object) -> ModelRecord:
    base: dict[str, object] = dict(
        id=ID, uri="s3://b/m", label="model-locality.io/m.01234567", files=(), total_bytes=1,
        etag=None, fetched_at=1.0, last_used=2.0, pins=frozenset(), revision="aabbccdd11", dir=None,
    )  # fmt: skip
    base.update(changes)
    return ModelRecord(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("taken", "expected"),
    [
        pytest.param(set(), ID, id="free-id"),
        pytest.param({ID}, f"{ID}@ffee0011", id="id-taken"),
        pytest.param({ID, f"{ID}@ffee0011"}, f"{ID}@ffee0011.1", id="both-taken"),
    ],
)
def test_new_dir(taken: set[str], expected: str) -> None:
    assert new_dir(ID, "ffee0011deadbeef", taken) == expected


def test_superseded_keeps_dir_and_pod_pins_only() -> None:
    pins = frozenset({"pod:ns/a", "distribution:d", "manual"})
    old = superseded(record(pins=pins, dir=f"{ID}@12345678"), set())
    assert old.id == f"{ID}@aabbccdd" and old.dir == f"{ID}@12345678" and old.pins == {"pod:ns/a"}
    assert old.superseded and old.model_id == ID
    assert superseded(record(), {f"{ID}@aabbccdd"}).id == f"{ID}@aabbccdd.1"
    assert superseded(record(), set()).dir_name == ID  # the first revision's dir stays models/<id>


@pytest.mark.parametrize(
    ("have", "want", "same"),
    [
        pytest.param("abcdef1234567890", "abcdef1234567890", True, id="full"),
        pytest.param("abcdef1234567890", "abcdef1", True, id="prefix-7"),
        pytest.param("abcdef1234567890", "abc", False, id="prefix-too-short"),
        pytest.param("abcdef1234567890", "ABCDEF1", True, id="case"),
        pytest.param(None, "abcdef1", False, id="no-revision"),
    ],
)
def test_same_revision(have: str | None, want: str, same: bool) -> None:
    assert same_revision(have, want) is same


def test_dir_round_trips_and_bad_dir_is_refused() -> None:
    r = record(id=f"{ID}@aabbccdd", dir=ID)
    assert record_from_json(record_to_json(r)) == r
    assert "dir" not in record_to_json(record())
    with pytest.raises(ValueError, match="unusable directory"):
        record_from_json({**record_to_json(r), "dir": "../etc"})


def test_unique() -> None:
    assert unique("a", {"a", "a.1"}) == "a.2"
