"""Start-up recovery of a cache root: roll forward half-done commits, remove debris, keep resumable staging.

Cases, by what a crash can leave behind (commit order: fsync files, record, rename, cleanup):

- record + ``models/<dir>``: a committed model (``dir``: the record's id unless it names another,
  e.g. ``<id>@<rev8>`` for a later revision); a superseded revision's ``records/<id>@<rev8>.json``
  is one too, except when it names the current record's directory (a crash during the switch:
  the superseded copy goes);
- record, no model dir, complete ``staging/<id>/files``: crash between record and rename, so
  the rename is done now (the record was written only after every file was verified and synced);
- record and nothing else: the model was being deleted; the record goes;
- a record that cannot be parsed (EIO, a torn byte, a newer version's format): the model and the
  record move to ``quarantine/`` (kept for an operator; ``rm`` frees them), never deleted;
- ``models/<id>`` without record: debris, moved to trash and deleted (never served as a model);
- ``staging/<id>`` with a manifest: resumable, kept; without one, or unlocked junk: removed; of a
  model with a record: removed, unless marked as a refresh in flight (``agent.resume``);
- ``trash/*`` and ``*.tmp``: removed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from pathlib import Path

from agent.store import trash
from agent.store.durable import fsync_dir
from agent.store.partials import quarantine
from agent.store.refreshmarks import is_refresh
from locality.records import RECORD_KEY, Layout, ModelRecord, record_from_json

log = logging.getLogger(__name__)


def recover(layout: Layout) -> list[ModelRecord]:
    """Bring ``layout`` to a consistent state and return the committed records."""
    trash.empty(layout)
    records = []
    for path in sorted(layout.records.glob("*.json")):
        model_id = path.name.removesuffix(".json")
        if not RECORD_KEY.match(model_id):
            continue  # pending pins (<id>.pins.json) and foreign files
        record, problem = read_record(layout, model_id)
        if problem is not None:
            quarantine(layout, model_id, problem)
        elif record is not None and _settle(layout, record):
            records.append(record)
        else:
            path.unlink(missing_ok=True)
    for path in layout.records.glob(".*.tmp"):
        path.unlink(missing_ok=True)
    records = _drop_duplicates(layout, records)
    known = {r.id for r in records}
    dirs = {r.dir_name for r in records}
    for path in layout.models.iterdir():
        if path.name not in dirs:
            log.warning("removing %s: a model directory without a record", path)
            trash.discard(layout, path)
    for path in layout.staging.iterdir():
        # A committed model's staging is debris unless it is a marked refresh (resumed at start).
        debris = path.name in known and not is_refresh(path)
        if path.is_dir() and (debris or not (path / "manifest.json").exists()):
            _remove_unlocked(layout, path)
    return records


def _drop_duplicates(layout: Layout, records: list[ModelRecord]) -> list[ModelRecord]:
    """Drop a superseded record naming a directory a current record names (a torn switch)."""
    current = {r.dir_name for r in records if not r.superseded}
    kept = []
    for record in records:
        if record.superseded and record.dir_name in current:
            log.warning("dropping %s: a torn switch left it naming the current directory", record.id)
            layout.record(record.id).unlink(missing_ok=True)
        else:
            kept.append(record)
    return kept


def read_record(layout: Layout, model_id: str) -> tuple[ModelRecord | None, str | None]:
    """``(record, None)``, ``(None, None)`` when absent, or ``(None, why)`` when it cannot be parsed."""
    path = layout.record(model_id)
    try:
        record = record_from_json(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"unreadable record {path.name}: {type(exc).__name__}: {exc}"[:500]
    if record.id != model_id:
        return None, f"record {path.name} names another model ({record.id[:40]!r})"
    return record, None


def _settle(layout: Layout, record: ModelRecord) -> bool:
    model_dir = layout.models / record.dir_name
    if model_dir.is_dir():
        return True
    staged = layout.stage(record.id) / "files"
    if (
        not record.superseded
        and staged.is_dir()
        and all(
            (staged / f.path).is_file() and (staged / f.path).stat().st_size == f.size for f in record.files
        )
    ):
        log.info("finishing the commit of %s (%s)", record.id, record.uri)
        os.rename(staged, model_dir)
        fsync_dir(layout.models)
        shutil.rmtree(layout.stage(record.id), ignore_errors=True)
        return True
    log.warning("dropping the record of %s: its directory is gone", record.id)
    return False


def remove_staging(layout: Layout, model_id: str) -> bool:
    """Delete the staging of ``model_id`` unless a live fetch holds it; True when something went."""
    path = layout.stage(model_id)
    return path.is_dir() and _remove_unlocked(layout, path)


def _remove_unlocked(layout: Layout, path: Path) -> bool:
    """Remove a staging dir unless a live fetch (any process) holds its lock."""
    lock = layout.staging / f"{path.name}.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        trash.remove_tree(path)
    finally:
        os.close(fd)
    return True
