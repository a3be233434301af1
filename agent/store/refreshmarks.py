"""Refreshes interrupted by a restart: a mark in the refresh's staging, so recovery keeps its bytes
and the next start resumes it (``staging/<id>/refresh.json``: ``{"uri", "expect"}``).

A staging directory of a model that already has a record is only ever a refresh's (a fetch of a
committed model returns the record). Without the mark, recovery takes it for debris.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.store.durable import write_json_atomic
from locality.records import Layout

MARK = "refresh.json"


def mark_refresh(staging_dir: Path, uri: str, expect: str | None) -> None:
    """Record that ``staging_dir`` holds a refresh of ``uri`` (to revision ``expect``, if pinned)."""
    write_json_atomic(staging_dir / MARK, {"uri": uri, "expect": expect})


def is_refresh(staging_dir: Path) -> bool:
    return (staging_dir / MARK).is_file()


def interrupted_refreshes(layout: Layout, known: set[str]) -> list[tuple[str, str | None]]:
    """``(uri, expect)`` of every marked refresh staged for a model in ``known``; unreadable marks
    are skipped (the next scheduled refresh finds the change and resumes the same staging)."""
    out = []
    for model_id in sorted(known):
        try:
            data = json.loads((layout.stage(model_id) / MARK).read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("uri"), str):
            expect = data.get("expect")
            out.append((data["uri"], expect if isinstance(expect, str) else None))
    return out
