"""The time-to-ready part of the node contract: bytes_done, the fetch-rate annotation, and the
material-change rules that bound how often an agent writes them (named table rows)."""

from __future__ import annotations

import json

import pytest

from locality.contract import (
    FETCH_RATE_ANNOTATION,
    ModelEntry,
    format_fetch_rate,
    parse_fetch_rate,
    parse_models_annotation,
    progress_changed,
    rate_changed,
)

GB = 10**9


def entry(state: str, done: object = None, size: int | None = GB) -> dict[str, object]:
    out: dict[str, object] = {"uri": "s3://b/m", "state": state}
    if size is not None:
        out["bytes"] = size
    if done is not None:
        out["bytes_done"] = done
    return out


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("fetching with progress", entry("fetching", 9 * GB // 10), 9 * GB // 10),
        ("queued with no progress key", entry("queued"), None),
        ("progress beyond the size is clamped", entry("fetching", 2 * GB), GB),
        ("size unknown: progress kept", entry("fetching", 5, size=None), 5),
        ("ready: progress ignored", entry("ready", 1), None),
        ("failed: progress ignored", entry("failed", 1), None),
        ("negative progress ignored", entry("fetching", -1), None),
        ("boolean progress ignored", entry("fetching", True), None),
        ("string progress ignored", entry("fetching", "9"), None),
    ],
)
def test_bytes_done_parsing(name: str, raw: dict[str, object], expected: int | None) -> None:
    models, problem = parse_models_annotation(json.dumps({"m": raw}))
    assert problem is None, name
    assert models["m"].bytes_done == expected, name


@pytest.mark.parametrize(
    ("name", "model", "extra"),
    [
        ("in flight with progress", ModelEntry("u", GB, "fetching", bytes_done=10), {"bytes_done": 10}),
        ("in flight without progress", ModelEntry("u", GB, "queued"), {}),
        ("ready drops progress", ModelEntry("u", GB, "ready", bytes_done=10), {}),
    ],
)
def test_entry_round_trip(name: str, model: ModelEntry, extra: dict[str, object]) -> None:
    expected = {"uri": "u", "bytes": GB, "state": model.state, **extra}
    assert model.as_json() == expected, name
    again, _ = parse_models_annotation(json.dumps({"m": model.as_json()}))
    assert again["m"].as_json() == expected, name


@pytest.mark.parametrize(
    ("name", "raw", "rate", "bad"),
    [
        ("absent", None, None, False),
        ("plain integer", "730000000", 730_000_000, False),
        ("zero is not a rate", "0", None, True),
        ("negative", "-5", None, True),
        ("float text", "1.5e9", None, True),
        ("not a string", 5, None, True),
        ("absurdly long", "9" * 16, None, True),
        ("unicode digits", "\u0663", None, True),
    ],
)
def test_parse_fetch_rate(name: str, raw: object, rate: int | None, bad: bool) -> None:
    got, problem = parse_fetch_rate(raw)
    assert got == rate, name
    assert (problem is not None) == bad, name
    if bad:
        assert FETCH_RATE_ANNOTATION in str(problem)


@pytest.mark.parametrize(
    ("name", "measured", "text"),
    [
        ("two significant digits", 734_003_200.0, "730000000"),
        ("half rounds to even", 1_250_000_000.4, "1200000000"),
        ("small rates kept", 42.0, "42"),
        ("never zero", 0.2, "1"),
    ],
)
def test_format_fetch_rate(name: str, measured: float, text: str) -> None:
    assert format_fetch_rate(measured) == text, name
    assert parse_fetch_rate(text)[0] == int(text), name


@pytest.mark.parametrize(
    ("name", "written", "measured", "material"),
    [
        ("nothing written yet", None, 1e8, True),
        ("same rate", 100_000_000, 1.0e8, False),
        ("20% faster: noise", 100_000_000, 1.2e8, False),
        ("30% faster", 100_000_000, 1.3e8, True),
        ("30% slower", 100_000_000, 0.7e8, True),
        ("no measurement", 100_000_000, 0.0, False),
    ],
)
def test_rate_changed(name: str, written: int | None, measured: float, material: bool) -> None:
    assert rate_changed(written, measured) is material, name


@pytest.mark.parametrize(
    ("name", "written", "done", "total", "material"),
    [
        ("first 10%", None, GB // 10, GB, True),
        ("5% since the last write", GB // 2, GB // 2 + GB // 20, GB, False),
        ("10% since the last write", GB // 2, 6 * GB // 10, GB, True),
        ("total unknown", None, GB, None, False),
        ("nothing yet", None, 0, GB, False),
    ],
)
def test_progress_changed(
    name: str, written: int | None, done: int, total: int | None, material: bool
) -> None:
    assert progress_changed(written, done, total) is material, name
