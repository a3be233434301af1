"""``locality.timestamps``: the one RFC 3339 writer and reader (named rows)."""

from __future__ import annotations

import pytest

from locality.timestamps import parse_rfc3339, rfc3339

NEW_YEAR = 1767225600.0  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("epoch", "text"),
    [
        pytest.param(NEW_YEAR, "2026-01-01T00:00:00Z", id="whole second"),
        pytest.param(NEW_YEAR + 61.9, "2026-01-01T00:01:01Z", id="fraction dropped"),
        pytest.param(0, "1970-01-01T00:00:00Z", id="epoch"),
    ],
)
def test_rfc3339(epoch: float, text: str) -> None:
    assert rfc3339(epoch) == text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("2026-01-01T00:00:00Z", NEW_YEAR, id="Z"),
        pytest.param("2026-01-01T00:00:00.5Z", NEW_YEAR + 0.5, id="fraction"),
        pytest.param("2026-01-01T02:00:00+02:00", NEW_YEAR, id="offset"),
        pytest.param("2026-01-01T00:00:00", NEW_YEAR, id="no offset: UTC"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="absent"),
        pytest.param("yesterday", None, id="not a time"),
        pytest.param(5, None, id="not a string"),
    ],
)
def test_parse_rfc3339(raw: object, expected: float | None) -> None:
    assert parse_rfc3339(raw) == expected


def test_round_trip() -> None:
    assert parse_rfc3339(rfc3339(NEW_YEAR + 3600)) == NEW_YEAR + 3600
