"""Pins owned by the watchers (``pod:<ns>/<name>``, ``distribution:<name>``), written through to the cache.

The watchers report the full wanted set after every change; ``Pins.apply`` makes the cache's
watcher-owned pins of a model equal to it. Other pins (e.g. set by hand with the CLI) are left
alone. A superseded revision (``<id>@<rev8>``) keeps the pod pins it had at the switch until those
pods are gone, and gains none: pods that start later read the current revision.
Until the first report nothing is touched: unpinning before the informers listed once
could let eviction remove a model that a running pod reads.
"""

from __future__ import annotations

import asyncio
import logging

from agent.lifecycle.modelstate import Wanted
from agent.store.cache import Store
from agent.store.errors import CacheError, UnknownModel
from locality.records import base_id

log = logging.getLogger(__name__)

PIN_PREFIXES = ("pod:", "distribution:")


class Pins:
    """The wanted set from the watchers and the pins applied to the cache for it."""

    def __init__(self, cache: Store) -> None:
        self.cache = cache
        self.wanted: Wanted = {}
        self.known = False
        self.changed = asyncio.Event()
        self._applied: dict[str, frozenset[str]] = {}  # for models not committed yet

    def set(self, wanted: Wanted) -> None:
        self.wanted = dict(wanted)
        self.known = True
        self.changed.set()

    def reasons(self, model_id: str) -> frozenset[str]:
        entry = self.wanted.get(model_id)
        return entry[1] if entry else frozenset()

    async def apply_all(self) -> None:
        """Apply every wanted model's pins and drop the stale ones of every other model."""
        if not self.known:
            return
        pinned = {r.id for r in self.cache.records() if r.pins}
        for model_id in sorted(set(self.wanted) | set(self._applied) | pinned):
            await self.apply(model_id)

    async def apply(self, model_id: str) -> None:
        """Make the cache's watcher-owned pins of ``model_id`` equal the wanted reasons."""
        if not self.known:
            return
        want = self.reasons(base_id(model_id))
        record = self.cache.get(model_id)
        have = self._applied.get(model_id, frozenset())
        if record is not None:
            have = frozenset(p for p in record.pins if p.startswith(PIN_PREFIXES))
            if record.superseded:
                want = want & have
        try:
            for reason in sorted(want - have):
                await asyncio.to_thread(self.cache.pin, model_id, reason)
            for reason in sorted(have - want):
                await asyncio.to_thread(self.cache.unpin, model_id, reason)
        except UnknownModel:
            pass  # not committed yet: applied again after the commit
        except (CacheError, OSError) as exc:
            log.warning("cannot update pins of %s: %s", model_id, exc)
            return
        if want:
            self._applied[model_id] = want
        else:
            self._applied.pop(model_id, None)
