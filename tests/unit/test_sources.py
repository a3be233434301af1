"""Which listings a source accepts: hostile and clashing paths abort the whole model."""

from __future__ import annotations

import pytest

from agent.fetch.sources.base import SourceError, checked_files
from agent.store.files import RemoteFile, model_etag


def files(*paths: str) -> list[RemoteFile]:
    return [RemoteFile(path=p, size=1, etag=f'"{i}"', key=f"m/{p}") for i, p in enumerate(paths)]


@pytest.mark.parametrize(
    ("paths", "needle"),
    [
        pytest.param(("config.json", "../escape"), "'..'", id="dotdot"),
        pytest.param(("/etc/passwd",), "absolute", id="absolute"),
        pytest.param(("a\x00b",), "NUL", id="nul"),
        pytest.param(("a\\..\\b",), "backslash", id="backslash"),
        pytest.param(("a//b",), "empty", id="empty-segment"),
        pytest.param(("a", "a/b"), "both a file and a directory", id="file-dir-clash"),
        pytest.param(("a", "a"), "duplicate", id="duplicate"),
        pytest.param((), "no objects", id="empty-listing"),
        pytest.param(("x" * 300,), "segment over", id="long-segment"),
    ],
)
def test_refused(paths: tuple[str, ...], needle: str) -> None:
    with pytest.raises(SourceError, match=needle) as caught:
        checked_files("s3://b/m", files(*paths))
    assert caught.value.permanent


def test_accepted_sorted() -> None:
    got = checked_files("s3://b/m", files("z.bin", "a/b/c.json", "a/d"))
    assert [f.path for f in got] == ["a/b/c.json", "a/d", "z.bin"]


def test_model_etag() -> None:
    one = files("a")
    assert model_etag(one) == '"0"'
    two = files("a", "b")
    changed = [two[0], RemoteFile("b", 1, '"other"', "m/b")]
    assert model_etag(two) != model_etag(changed) and len(model_etag(two) or "") == 16
