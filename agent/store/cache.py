"""The store: one cache root's shelf (``agent.store.shelf``) and the door through which the fetch
path stages and commits a model.

The door (``claim``, ``adopt``, ``stage``, ``settle``, ``commit``) is all the fetch path calls:
it writes verified chunks into the ``Staging`` that ``stage`` opened, then asks ``commit``, which
checks every file against the chunk digests written in-stream and the origin's checksum, then
switches the model in atomically.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from agent.store.commit import Incomplete, finish_commit, prepare_commit
from agent.store.durable import save_record
from agent.store.errors import NoSpace, VerificationFailed
from agent.store.files import RemoteFile, revision_of
from agent.store.partials import allocated_bytes, read_partial, unwant
from agent.store.recovery import read_record
from agent.store.revswitch import new_dir, superseded
from agent.store.shelf import Shelf
from agent.store.staging import ChunkKey, Staging, staging_lock
from locality.identity import ModelRef
from locality.records import FileRecord, ModelRecord

log = logging.getLogger(__name__)


class Store(Shelf):
    """A cache root: its shelf plus the door of the fetch path (see the module docstring)."""

    @asynccontextmanager
    async def claim(self, model_id: str) -> AsyncIterator[None]:
        """Hold the one fetch of ``model_id``: this process's lock, then the cross-process ``flock``."""
        self._ensure()
        async with self._locks.setdefault(model_id, asyncio.Lock()), staging_lock(self.layout, model_id):
            yield

    def adopt(self, model_id: str) -> ModelRecord | None:
        """The record of a model another fetch (this process or another) committed meanwhile."""
        with self._mutex:
            if (record := self._records.get(model_id)) is not None:
                return record
            record, _ = read_record(self.layout, model_id)
            if record is None or not (self.layout.models / record.dir_name).is_dir():
                return None
            self._records[model_id] = record
            self._partials.pop(model_id, None)
            return record

    def stage(self, ref: ModelRef, staging: Staging, files: list[RemoteFile]) -> dict[ChunkKey, str]:
        """In a thread: open the staging (fsyncs), make room, reserve the model's full size."""
        total = sum(f.size for f in files)
        done = staging.open(ref.uri, self.settings.chunk_bytes, files)
        staged = allocated_bytes(staging.files_dir)
        with self._mutex:
            self._partials.pop(ref.id, None)  # counted in full as reserved from here
            st = os.statvfs(self.root)
            plan = self._plan(total, free=st.f_bavail * st.f_frsize + staged, skip=ref.id)
            if not plan.fits:
                raise NoSpace(f"no room for {ref.uri}: {plan.reason}")
            evicted, trash = self._evict_all(plan.evict)
            self._reserved[ref.id] = total
        self._finish_evictions(evicted, trash)
        return done

    def settle(self, model_id: str) -> None:
        """After a fetch attempt: note what it left in staging (for ``ls``, ``gc`` and the quota)."""
        with self._mutex:
            self._reserved.pop(model_id, None)
            partial = None if model_id in self._records else read_partial(self.layout, model_id)
            if partial is None:
                self._partials.pop(model_id, None)
            else:
                self._partials[model_id] = partial

    def commit(
        self,
        ref: ModelRef,
        files: list[RemoteFile],
        done: dict[ChunkKey, str],
        staging: Staging,
    ) -> ModelRecord:
        try:
            checked = prepare_commit(ref, files, done, staging, chunk_bytes=self.settings.chunk_bytes)
        except Incomplete as exc:
            staging.remove()
            raise VerificationFailed(str(exc)) from exc
        with self._mutex:  # the record merges pending pins: no pin may slip in between
            record = self._switch(ref, files, checked, staging)
            self._records[ref.id] = record
            self._partials.pop(ref.id, None)
            unwant(self.layout, ref.id)
        staging.remove()
        return record

    def _switch(
        self, ref: ModelRef, files: list[RemoteFile], checked: list[FileRecord], staging: Staging
    ) -> ModelRecord:
        """Under the lock: commit into a directory no record names; a current revision (if still
        here) first becomes ``records/<id>@<rev8>.json`` with its directory and pod pins, then the
        new record replaces ``records/<id>.json`` (the atomic switch), then the files move in."""
        current = self._records.get(ref.id)
        # Keys and directory names share one namespace, so a superseded record's key never names
        # another record's directory (quarantine moves ``models/<key>`` along with a bad record).
        taken = set(self._records) | {r.dir_name for r in self._records.values()}
        old = superseded(current, taken - {current.dir_name}) if current is not None else None
        if old is not None:
            taken.add(old.id)
            save_record(self.layout, old)
            log.info("switching %s from revision %s to %s", ref.uri, old.revision, revision_of(files))
        dir_name = new_dir(ref.id, revision_of(files), taken)
        try:
            record = finish_commit(
                self.layout,
                ref,
                files,
                checked,
                staging,
                now=self._now(),
                dir_name=dir_name,
                pins=current.pins if current is not None else frozenset(),
            )
        except BaseException:
            if old is not None:  # not switched: the old revision is still the current one
                self.layout.record(old.id).unlink(missing_ok=True)
            raise
        if old is not None:
            self._records[old.id] = old
        return record
