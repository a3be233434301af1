"""What ``model-agent ls`` and ``gc`` print: human sizes, a header, a state column, the URI."""

from __future__ import annotations

import pytest

from agent.cli.render import ls_table, usage_line
from locality.units import human_size


@pytest.mark.parametrize(
    ("n", "text"),
    [
        pytest.param(0, "0 B", id="zero"),
        pytest.param(1023, "1023 B", id="bytes"),
        pytest.param(1536, "1.5 KiB", id="KiB"),
        pytest.param(90_868_376, "86.7 MiB", id="MiniLM"),
        pytest.param(4 * 2**30, "4.0 GiB", id="GiB"),
        pytest.param(3 * 2**50 * 1024, "3072.0 PiB", id="beyond the units"),
        pytest.param(None, "?", id="unknown"),
    ],
)
def test_human_size(n: int | None, text: str) -> None:
    assert human_size(n) == text


def test_ls_table_has_a_header_and_every_state_passes_through() -> None:
    views = [
        {
            "id": "b1b39b0c6e8b5743",
            "state": "ready",
            "bytes_total": 90_868_376,
            "bytes_done": 90_868_376,
            "pins": ["pod/ns/a"],
            "uri": "s3://models/sentence-transformers/all-MiniLM-L6-v2",
            "revision": "3f1e5c0a9b2d47e8a6c1d0f9e8b7a6c5d4e3f2a1",
        },
        {
            "id": "0123456789abcdef",
            "state": "partial",
            "bytes_total": 6 * 2**20,
            "bytes_done": 2 * 2**20,
            "pins": [],
            "uri": "http://origin/x.bin",
        },
        {
            "id": "fedcba9876543210",
            "state": "quarantined",
            "bytes_total": 10,
            "bytes_done": None,
            "uri": None,
            "error": "unreadable record",
        },
        {"id": "00000000000000aa", "state": "a-state-added-later", "bytes_total": None, "bytes_done": 0},
    ]
    lines = ls_table(views).splitlines()
    assert lines[0].split() == ["ID", "STATE", "SIZE", "REVISION", "PINS", "URI"]
    assert lines[1].split() == [
        "b1b39b0c6e8b5743",
        "ready",
        "86.7",
        "MiB",
        "3f1e5c0a9b2d",
        "pod/ns/a",
        "s3://models/sentence-transformers/all-MiniLM-L6-v2",
    ]
    assert (
        "partial" in lines[2] and "2.0 MiB / 6.0 MiB" in lines[2] and lines[2].endswith("http://origin/x.bin")
    )
    assert "quarantined" in lines[3] and lines[3].endswith("unreadable record")
    assert "a-state-added-later" in lines[4] and "0 B / ?" in lines[4]
    words = ["STATE", "ready", "partial", "quarantined"]
    starts = {line.index(word) for line, word in zip(lines[:4], words, strict=True)}
    assert len(starts) == 1  # the STATE column is aligned
    assert lines[1].index("3f1e5c0a9b2d ") == lines[0].index("REVISION")  # 12 characters, aligned
    assert lines[2].split()[-3] == "-"  # no revision yet (a partial fetch)


@pytest.mark.parametrize(
    ("revision", "cell"),
    [
        pytest.param("9a7b3c1d2e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b", "9a7b3c1d2e4f", id="commit sha"),
        pytest.param("short", "short", id="shorter than 12"),
        pytest.param(None, "-", id="none (a record from before revisions)"),
        pytest.param("", "-", id="empty"),
    ],
)
def test_ls_revision_column(revision: str | None, cell: str) -> None:
    view = {"id": "b1b39b0c6e8b5743", "state": "ready", "bytes_total": 1, "revision": revision}
    assert ls_table([view]).splitlines()[1].split()[4] == cell  # ID STATE 1 B REVISION


def test_gc_summary_in_human_sizes() -> None:
    assert usage_line(2, 3 * 2**30, 10 * 2**30) == "2 evicted; 3.0 GiB of 10.0 GiB in use (30%)"
