"""The marks of interrupted refreshes: what a restart resumes, and what it skips."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.store.refreshmarks import MARK, interrupted_refreshes, mark_refresh
from locality.records import Layout

ROWS = {
    "pinned revision": ('{"uri": "s3://models/a", "expect": "abc1234"}', [("s3://models/a", "abc1234")]),
    "no pin": ('{"uri": "s3://models/a", "expect": null}', [("s3://models/a", None)]),
    "expect not a string": ('{"uri": "s3://models/a", "expect": 7}', [("s3://models/a", None)]),
    "no uri": ('{"expect": "abc1234"}', []),
    "not an object": ('["s3://models/a"]', []),
    "torn": ('{"uri": "s3://mo', []),
}


@pytest.mark.parametrize(("text", "expected"), list(ROWS.values()), ids=list(ROWS))
def test_marks(tmp_path: Path, text: str, expected: list[tuple[str, str | None]]) -> None:
    layout = Layout(tmp_path)
    layout.stage("m").mkdir(parents=True)
    (layout.stage("m") / MARK).write_text(text)
    assert interrupted_refreshes(layout, {"m"}) == expected


def test_only_known_models_and_written_marks(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    for model_id in ("m", "other"):
        layout.stage(model_id).mkdir(parents=True)
        mark_refresh(layout.stage(model_id), f"s3://models/{model_id}", None)
    layout.stage("unmarked").mkdir(parents=True)
    assert interrupted_refreshes(layout, {"m", "unmarked", "absent"}) == [("s3://models/m", None)]
