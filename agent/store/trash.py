"""Deleting from the cache: rename into ``trash/`` first (atomic for readers), then remove the tree.

A directory that is half deleted is never seen under ``models/``; whatever a crash leaves in
``trash/`` is removed at the next start (``empty``).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from locality.records import Layout


def to_trash(layout: Layout, path: Path, name: str | None = None, *, missing_ok: bool = False) -> Path:
    """Rename ``path`` to ``trash/<name>.<8 hex>`` (default name: its own); return the new path.

    The caller removes it (``remove_tree``), usually once its lock is released. ``missing_ok``:
    a path that is already gone is not an error (the returned path then does not exist).
    """
    trash = layout.trash / f"{name or path.name}.{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        if not missing_ok:
            raise
    return trash


def remove_tree(path: Path) -> None:
    """Remove a directory tree, a file or a link; whatever is already gone is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def discard(layout: Layout, path: Path) -> None:
    """Trash ``path`` and remove it at once; one that cannot be renamed is removed where it is."""
    try:
        trash = to_trash(layout, path)
    except OSError:
        trash = path
    remove_tree(trash)


def empty(layout: Layout) -> None:
    """Remove whatever a crash left in ``trash/``."""
    for path in layout.trash.iterdir():
        remove_tree(path)
