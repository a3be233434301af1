"""The informer's pure parts: back-off delays, object keys, list differences."""

from __future__ import annotations

from typing import Any

import pytest

from locality.backoff import backoff_delay
from locality.informer import list_diff, object_key


def obj(name: str, rv: str, namespace: str | None = None) -> dict[str, Any]:
    meta = {"name": name, "resourceVersion": rv}
    if namespace:
        meta["namespace"] = namespace
    return {"metadata": meta}


@pytest.mark.parametrize(
    ("attempt", "r", "expected"),
    [
        pytest.param(1, 0.0, 0.1, id="first-low-jitter"),
        pytest.param(1, 1.0, 0.2, id="first-high-jitter"),
        pytest.param(3, 0.0, 0.4, id="doubles"),
        pytest.param(20, 0.0, 5.0, id="capped-low"),
        pytest.param(20, 1.0, 10.0, id="capped-high"),
    ],
)
def test_backoff_delay(attempt: int, r: float, expected: float) -> None:
    assert backoff_delay(attempt, 0.2, 10.0, r) == pytest.approx(expected)


def test_backoff_grows_until_the_cap() -> None:
    delays = [backoff_delay(n, 0.2, 10.0, 0.5) for n in range(1, 12)]
    assert delays == sorted(delays)
    assert max(delays) <= 10.0


@pytest.mark.parametrize(
    ("kind", "value", "key"),
    [
        pytest.param("pods", obj("p", "1", "ns"), "ns/p", id="pod"),
        pytest.param("nodes", obj("n", "1"), "n", id="node"),
        pytest.param("modeldistributions", obj("d", "1"), "d", id="distribution"),
    ],
)
def test_object_key(kind: Any, value: dict[str, Any], key: str) -> None:
    assert object_key(kind, value) == key


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param({}, {}, [], id="empty"),
        pytest.param({}, {"a": obj("a", "1")}, [("ADDED", "a")], id="added"),
        pytest.param({"a": obj("a", "1")}, {"a": obj("a", "1")}, [], id="unchanged"),
        pytest.param({"a": obj("a", "1")}, {"a": obj("a", "2")}, [("MODIFIED", "a")], id="modified"),
        pytest.param({"a": obj("a", "1")}, {}, [("DELETED", "a")], id="deleted"),
        pytest.param(
            {"a": obj("a", "1"), "b": obj("b", "1")},
            {"b": obj("b", "3"), "c": obj("c", "2")},
            [("MODIFIED", "b"), ("ADDED", "c"), ("DELETED", "a")],
            id="mixed",
        ),
    ],
)
def test_list_diff(old: dict[str, Any], new: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    got = [(kind, o["metadata"]["name"]) for kind, o in list_diff(old, new)]
    assert sorted(got) == sorted(expected)
