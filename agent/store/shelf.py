"""The shelf of one cache root: committed models, their records, pins, verification and eviction.

Committed means durable: every file is fdatasync'ed and every directory fsync'ed, then the record
is written (tmp + fsync + rename), then ``staging/<id>/files`` is renamed to ``models/<id>``. A
crash between record and rename is rolled forward by ``scan``; a model dir without a record is
debris and removed; a record that cannot be parsed sends its model to ``quarantine/``. Only one
fetch per model runs at a time, across processes too (``claim``: an asyncio lock plus an
``flock``); one process owns the root (``agent.store.lock``).

The door (``claim``, ``adopt``, ``stage``, ``settle``, ``commit``) is all the fetch path calls:
it writes verified chunks into the ``Staging`` that ``stage`` opened, then asks ``commit``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from agent.config import Settings
from agent.store.commit import pending_pins, set_pending_pins
from agent.store.durable import fsync_dir, save_record
from agent.store.errors import Pinned, UnknownModel
from agent.store.eviction import Candidate, Plan, plan_eviction
from agent.store.partials import (
    Partial,
    Quarantined,
    free_quarantined,
    partials,
    quarantined,
    unwant,
    want,
    wanted,
)
from agent.store.recovery import read_record, recover, remove_staging
from agent.store.refreshmarks import interrupted_refreshes
from agent.store.trash import remove_tree, to_trash
from locality.identity import ModelRef
from locality.recordcheck import verify_files
from locality.records import RECORD_KEY, Layout, ModelRecord
from locality.units import human_size

log = logging.getLogger(__name__)


class Shelf:
    """One cache root's committed models (``Store`` adds the door the fetch path uses).

    Every method that changes records, pins or files takes ``self._mutex`` (one
    ``threading.RLock``: the callers are the loop's worker threads and the CLI, so a lock works
    where a single-writer task would not) and may block on disk: a daemon calls them through
    ``asyncio.to_thread``, never on the loop. Reads (``records``, ``get``, ``usage``,
    ``partials``, ``quarantined``) take no lock: they read dicts that are only changed one entry
    at a time, under the lock.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        on_change: Callable[[str], None] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.root = Path(settings.cache_dir)
        self.layout = Layout(self.root)
        self._on_change = on_change or (lambda model_id: None)
        self._now = now
        self._records: dict[str, ModelRecord] = {}
        self._partials: dict[str, Partial] = {}
        self._quarantined: dict[str, Quarantined] = {}
        self._wanted: list[ModelRef] = []
        self._locks: dict[str, asyncio.Lock] = {}
        self._reserved: dict[str, int] = {}
        self._mutex = threading.RLock()
        self._scanned = False

    def changed(self, model_id: str) -> None:
        """Tell the owner (labels, views) that ``model_id`` changed."""
        self._on_change(model_id)

    # --- reading -------------------------------------------------------------------------------
    def scan(self) -> list[ModelRecord]:
        """Recover (the exclusive owner only): roll forward, quarantine unreadable records, delete
        debris, keep resumable staging."""
        with self._mutex:
            self.layout.create()
            self._records = {r.id: r for r in recover(self.layout)}
            self._load_extras()
            self._scanned = True
        return self.records()

    def load(self) -> list[ModelRecord]:
        """A read-only look (shared lock): no recovery, nothing created, moved or removed."""
        with self._mutex:
            records: dict[str, ModelRecord] = {}
            unreadable: dict[str, Quarantined] = {}
            for path in sorted(self.layout.records.glob("*.json")) if self.layout.records.is_dir() else []:
                model_id = path.name.removesuffix(".json")
                if not RECORD_KEY.match(model_id):
                    continue
                record, problem = read_record(self.layout, model_id)
                if problem is not None:
                    where = self.layout.model(model_id)
                    unreadable[model_id] = Quarantined(model_id, model_id, problem, 0, where)
                elif record is not None and (self.layout.models / record.dir_name).is_dir():
                    records[model_id] = record
            self._records = records
            self._load_extras()
            self._quarantined.update(unreadable)
            self._scanned = True
        return self.records()

    def records(self) -> list[ModelRecord]:
        self._ensure()
        return sorted(list(self._records.values()), key=lambda r: r.id)

    def partials(self) -> list[Partial]:
        """Fetches staged but not committed (running or interrupted), with bytes done and total."""
        self._ensure()
        return sorted(list(self._partials.values()), key=lambda p: p.id)

    def quarantined(self) -> list[Quarantined]:
        self._ensure()
        return sorted(list(self._quarantined.values()), key=lambda q: q.key)

    def interrupted_refreshes(self) -> list[tuple[str, str | None]]:
        """``(uri, expect)`` of refreshes a restart interrupted (their staging kept by recovery)."""
        self._ensure()
        return interrupted_refreshes(self.layout, set(self._records))

    def wanted(self) -> list[ModelRef]:
        """Fetches accepted over REST before the last start and not committed since."""
        self._ensure()
        return [r for r in list(self._wanted) if r.id not in self._records]

    def get(self, model_id: str) -> ModelRecord | None:
        self._ensure()
        return self._records.get(model_id)

    def model_path(self, model_id: str) -> Path:
        """The directory of a committed model's current revision (``models/<id>`` or ``<id>@<rev8>``)."""
        record = self._records.get(model_id)
        return self.layout.models / (record.dir_name if record is not None else model_id)

    def revisions(self, model_id: str) -> list[ModelRecord]:
        """The superseded revisions of ``model_id`` still on disk (kept while pods pin them)."""
        return [r for r in self.records() if r.superseded and r.model_id == model_id]

    def usage(self) -> tuple[int, int]:
        """``(used, quota)``: committed bytes, fetches in flight (their full size), the allocated
        bytes of interrupted fetches and of quarantined models; quota defaults to the disk size."""
        self._ensure()
        reserved = dict(self._reserved)
        used = (
            sum(r.total_bytes for r in list(self._records.values()))
            + sum(reserved.values())
            + sum(p.allocated for p in list(self._partials.values()) if p.id not in reserved)
            + sum(q.bytes for q in list(self._quarantined.values()))
        )
        if self.settings.quota_bytes is not None:
            return used, self.settings.quota_bytes
        st = os.statvfs(self.root)
        return used, st.f_blocks * st.f_frsize

    def pinned_bytes(self) -> int:
        """Committed bytes eviction may not free."""
        return sum(r.total_bytes for r in self.records() if r.pins)

    def high_watermark_bytes(self) -> int:
        """Where eviction starts; 0 when the disk's size cannot be read (no quota set)."""
        try:
            return int(self.usage()[1] * self.settings.high_watermark)
        except OSError:
            return 0

    def verify(self, model_id: str) -> list[str]:
        return verify_files(self.model_path(model_id), self._require(model_id))

    def check(self, model_id: str) -> list[str]:
        """The cheap check that a committed model is as committed: each file there, with the size
        and (when recorded) the mtime it had at commit. One ``stat`` per file; no bytes read."""
        record = self._require(model_id)
        root = self.model_path(model_id)
        problems = []
        for f in record.files:
            try:
                st = os.stat(root / f.path)
            except OSError as exc:
                problems.append(f"{f.path}: missing ({exc.strerror})")
                continue
            if st.st_size != f.size:
                problems.append(f"{f.path}: size {st.st_size} != {f.size}")
            elif f.mtime_ns is not None and st.st_mtime_ns != f.mtime_ns:
                problems.append(f"{f.path}: modified after commit (mtime changed)")
        return problems

    # --- changing ------------------------------------------------------------------------------
    def confirm(self, model_id: str) -> ModelRecord | None:
        """The record when the model passes ``check``. A damaged one is dropped (its pins kept as
        pending pins, so the fetch that replaces it is pinned alike) and None is returned."""
        if self.get(model_id) is None:
            return None
        problems = self.check(model_id)
        if not problems:
            return self._records.get(model_id)
        self.drop(model_id, "; ".join(problems[:3]))
        return None

    def drop(self, model_id: str, why: str) -> None:
        """Delete a damaged committed model so that it can be fetched again; its pins are kept as
        pending pins, so the fetch that replaces it is pinned alike."""
        with self._mutex:
            record = self._records.get(model_id)
            if record is None:
                return
            log.warning("dropping model %s, damaged on disk since its commit: %s", model_id, why)
            pins = set(record.pins) | set(pending_pins(self.layout, model_id))
            set_pending_pins(self.layout, model_id, pins)
            trash = self._unlink(model_id)
        remove_tree(trash)
        self._on_change(model_id)

    def want(self, ref: ModelRef) -> None:
        """Remember a fetch accepted over REST, so that a restart resumes it."""
        with self._mutex:
            want(self.layout, ref)

    def unwant(self, model_id: str) -> None:
        with self._mutex:
            unwant(self.layout, model_id)

    def remove(self, model_id: str, *, force: bool = False) -> None:
        """Delete a committed model, a quarantined one, or the staged bytes of one not committed
        (no fetch may run); a pinned committed model only with ``force``."""
        self._ensure()
        with self._mutex:
            record = self._records.get(model_id)
            if record is not None:
                if record.pins and not force:
                    raise Pinned(f"model {model_id} is pinned ({', '.join(sorted(record.pins))}); use force")
                trash: Path | None = self._unlink(model_id)
            elif (key := self._quarantine_key(model_id)) is not None:
                trash = free_quarantined(self.layout, key)
                self._quarantined.pop(key, None)
            elif remove_staging(self.layout, model_id):
                self._partials.pop(model_id, None)
                unwant(self.layout, model_id)
                return
            else:
                raise UnknownModel(f"no model {model_id!r} in {self.root}")
        if trash is not None:
            remove_tree(trash)
        self._on_change(model_id)

    def pin(self, model_id: str, reason: str) -> None:
        self._set_pin(model_id, reason, add=True)

    def unpin(self, model_id: str, reason: str) -> None:
        self._set_pin(model_id, reason, add=False)

    def touch(self, model_id: str) -> None:
        with self._mutex:
            record = self._require(model_id)
            self._save(replace(record, last_used=self._now()))

    def gc(self) -> list[str]:
        """Evict least-recently-used unpinned models (and idle partial fetches) while the cache is
        above its high watermark."""
        with self._mutex:
            evicted, trash = self._evict_all(self._plan().evict)
        self._finish_evictions(evicted, trash)
        return evicted

    # --- internals -----------------------------------------------------------------------------
    def _ensure(self) -> None:
        if not self._scanned:
            self.scan()

    def _load_extras(self) -> None:
        self._partials = {k: v for k, v in partials(self.layout).items() if k not in self._records}
        self._quarantined = quarantined(self.layout)
        self._wanted = [r for r in wanted(self.layout) if r.id not in self._records]

    def _quarantine_key(self, model_id: str) -> str | None:
        if model_id in self._quarantined:
            return model_id
        return next((q.key for q in self.quarantined() if q.id == model_id), None)

    def _require(self, model_id: str) -> ModelRecord:
        self._ensure()
        record = self._records.get(model_id)
        if record is None:
            raise UnknownModel(f"no model {model_id!r} in {self.root}")
        return record

    def _save(self, record: ModelRecord) -> None:
        save_record(self.layout, record)
        self._records[record.id] = record

    def _set_pin(self, model_id: str, reason: str, *, add: bool) -> None:
        self._ensure()
        with self._mutex:
            record = self._records.get(model_id)
            if record is not None:
                pins = record.pins | {reason} if add else record.pins - {reason}
                self._save(replace(record, pins=pins))
                return
            pending = set(pending_pins(self.layout, model_id))
            set_pending_pins(self.layout, model_id, pending | {reason} if add else pending - {reason})

    def _candidates(self, skip: str | None = None) -> list[Candidate]:
        # A superseded revision no pod pins goes first: nothing can ask for it any more.
        models = [
            Candidate(r.id, r.total_bytes, 0.0 if r.superseded else r.last_used, bool(r.pins))
            for r in list(self._records.values())
        ]
        idle = [
            Candidate(p.id, p.allocated, p.mtime, bool(pending_pins(self.layout, p.id)))
            for p in list(self._partials.values())
            if p.id not in self._reserved and p.id != skip
        ]
        return models + idle

    def _evict_all(self, model_ids: Sequence[str]) -> tuple[list[str], list[Path]]:
        """Under the lock: unlink what a plan chose, re-checking each pin now (a model pinned since
        the plan stays); return the ids gone and the trash dirs the caller deletes after the lock."""
        evicted, trash = [], []
        for model_id in model_ids:
            record = self._records.get(model_id)
            if record is not None and not record.pins:
                log.info("evicting %s (id %s, %s)", record.uri, model_id, human_size(record.total_bytes))
                trash.append(self._unlink(model_id))
                evicted.append(model_id)
            elif (
                record is None
                and model_id in self._partials
                and not pending_pins(self.layout, model_id)
                and remove_staging(self.layout, model_id)
            ):
                log.info("evicting the partial fetch of %s", model_id)
                self._partials.pop(model_id, None)
                unwant(self.layout, model_id)
                evicted.append(model_id)
        return evicted, trash

    def _finish_evictions(self, evicted: list[str], trash: list[Path]) -> None:
        for path in trash:
            remove_tree(path)
        for model_id in evicted:
            self._on_change(model_id)

    def _unlink(self, model_id: str) -> Path:
        """Under the lock: rename the dir into trash (atomic for readers), drop the record; the
        caller deletes the returned trash dir once the lock is released (it may take seconds)."""
        trash = to_trash(self.layout, self.model_path(model_id), model_id, missing_ok=True)
        self.layout.record(model_id).unlink(missing_ok=True)
        unwant(self.layout, model_id)
        fsync_dir(self.layout.records)
        self._records.pop(model_id, None)
        return trash

    def _plan(self, incoming: int = 0, free: int | None = None, skip: str | None = None) -> Plan:
        """The eviction plan for the cache as it is, plus ``incoming`` bytes about to arrive."""
        used, quota = self.usage()
        return plan_eviction(
            self._candidates(skip),
            used=used,
            quota=quota,
            high=self.settings.high_watermark,
            low=self.settings.low_watermark,
            incoming=incoming,
            free=free,
        )
