"""``agent.store.trash``: the one rename-to-trash-then-delete of the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.store import trash
from locality.records import Layout


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path).create()


def model_dir(layout: Layout, name: str = "m") -> Path:
    path = layout.models / name
    (path / "sub").mkdir(parents=True)
    (path / "sub" / "w.bin").write_bytes(b"x" * 10)
    return path


def test_to_trash_renames_under_its_own_name_or_the_given_one(layout: Layout) -> None:
    first = trash.to_trash(layout, model_dir(layout))
    second = trash.to_trash(layout, model_dir(layout), "q-m")
    assert not (layout.models / "m").exists()
    assert first.parent == second.parent == layout.trash
    assert first.name.startswith("m.") and second.name.startswith("q-m.") and len(first.name) == len("m.") + 8
    assert (first / "sub" / "w.bin").read_bytes() == b"x" * 10


def test_to_trash_of_a_missing_path(layout: Layout) -> None:
    with pytest.raises(FileNotFoundError):
        trash.to_trash(layout, layout.models / "gone")
    assert not trash.to_trash(layout, layout.models / "gone", missing_ok=True).exists()


@pytest.mark.parametrize("kind", ["dir", "file", "link", "missing"])
def test_remove_tree(layout: Layout, kind: str) -> None:
    path = layout.trash / "x"
    if kind == "dir":
        model_dir(layout).rename(path)
    elif kind == "file":
        path.write_text("x")
    elif kind == "link":
        target = model_dir(layout)
        path.symlink_to(target)
    trash.remove_tree(path)
    assert not path.exists() and not path.is_symlink()
    if kind == "link":
        assert (layout.models / "m" / "sub" / "w.bin").exists(), "a link is removed, not what it points to"


def test_discard_and_empty(layout: Layout) -> None:
    trash.discard(layout, model_dir(layout))
    assert not (layout.models / "m").exists() and list(layout.trash.iterdir()) == []
    trash.to_trash(layout, model_dir(layout, "n"))
    (layout.trash / "leftover.tmp").write_text("x")
    trash.empty(layout)
    assert list(layout.trash.iterdir()) == []
