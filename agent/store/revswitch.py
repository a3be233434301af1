"""Switching a URI to a new revision: directory and record names, and the superseded record.

Pure: names and records only, no disk. A URI's current revision is ``records/<id>.json``; a new
revision is fetched into a directory no record names (``models/<id>@<rev8>``), and the switch is
the atomic replace of ``records/<id>.json`` after ``records/<id>@<rev8>.json`` took over the old
one. Directories never move, so a running pod's path stays valid while it pins the old revision.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

from agent.store.files import short
from locality.records import ModelRecord

POD_PIN = "pod:"


def unique(base: str, taken: Collection[str]) -> str:
    """``base``, else ``base.1``, ``base.2``, ... (the first name not in ``taken``)."""
    name, n = base, 0
    while name in taken:
        n += 1
        name = f"{base}.{n}"
    return name


def new_dir(model_id: str, revision: str, taken: Collection[str]) -> str:
    """The directory of a new revision: ``<id>`` when no record names it, else ``<id>@<rev8>``."""
    return model_id if model_id not in taken else unique(f"{model_id}@{short(revision)}", taken)


def superseded(current: ModelRecord, keys: Collection[str]) -> ModelRecord:
    """The record that keeps ``current``'s directory once a newer revision replaces it.

    It keeps only the pod pins (those pods read the old directory); the distribution and manual
    pins mean "keep this URI" and move to the new revision.
    """
    key = unique(f"{current.id}@{short(current.revision or '')}", keys)
    pins = frozenset(p for p in current.pins if p.startswith(POD_PIN))
    return replace(current, id=key, dir=current.dir_name, pins=pins)


def same_revision(have: str | None, want: str) -> bool:
    """True when ``want`` (a full revision or a prefix of at least 7 characters) names ``have``."""
    want = want.strip().lower()
    return bool(have) and (have == want or (len(want) >= 7 and str(have).startswith(want)))
