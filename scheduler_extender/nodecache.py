"""The watch-backed node cache: Node events in, a current ``NodeIndex`` out.

Fed by ``locality.informer.Informer`` (list, then watch, re-list on a dropped watch and every
resync). Each event re-parses one Node into a ``NodeState`` and updates the index, so requests
never parse anything about nodes. Garbage annotations are logged once per node resourceVersion.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from scheduler_extender.index import NodeIndex
from scheduler_extender.nodes import NodeState, node_state

log = logging.getLogger(__name__)

DELETED = "DELETED"


class ProblemLog:
    """Logs a problem once per key (bounded memory), e.g. per node resourceVersion or per pod."""

    def __init__(self, limit: int = 10000, on_problem: Callable[[], None] | None = None) -> None:
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._limit = limit
        self._on_problem = on_problem

    def report(self, what: str, key: str, version: str, problem: str) -> None:
        marker = (key, version)
        if marker in self._seen:
            return
        self._seen[marker] = None
        if len(self._seen) > self._limit:
            self._seen.popitem(last=False)
        if self._on_problem is not None:
            self._on_problem()
        log.warning(
            "%s %s (version %s): %s; treated as holding no models", what, key, version or "?", problem
        )


class NodeCache:
    """Current ``NodeIndex`` of the cluster plus its sync state."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        problems: ProblemLog | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.index = NodeIndex()
        self.problems = problems or ProblemLog()
        self.on_change = on_change
        self._clock = clock
        self._updated: float | None = None
        self._synced = False
        self._source_synced: Callable[[], bool] | None = None
        self._source_last_sync: Callable[[], float] | None = None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def synced(self) -> bool:
        """True once a complete listing arrived (or in standalone mode, where none will)."""
        return self._synced or (self._source_synced is not None and self._source_synced())

    def mark_synced(self) -> None:
        self._synced = True

    def attach(self, synced: Callable[[], bool], last_sync: Callable[[], float]) -> None:
        """Take sync state and freshness from the informer feeding ``apply`` (same clock)."""
        self._source_synced, self._source_last_sync = synced, last_sync

    def age(self) -> float:
        """Seconds since the last list, event or bookmark; 0 before the first one."""
        last = self._source_last_sync() if self._source_last_sync is not None else self._updated
        return 0.0 if not last else max(0.0, self._clock() - last)

    def apply(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """One watch event (``ADDED``/``MODIFIED``/``DELETED``) for a Node object (a dict)."""
        self._updated = self._clock()
        if event_type == DELETED:
            name = _name(obj)
            if name:
                self.index.remove(name)
        else:
            state = self._parse(obj)
            if state is None:
                return
            old = self.index.get(state.name)
            self.index.upsert(state)
            if old is not None and replace(old, resource_version=state.resource_version) == state:
                return  # a status heartbeat or a change to fields we do not read: nothing to redo
        self._changed()

    def replace(self, objs: Iterable[Mapping[str, Any]]) -> None:
        """A complete listing: the cache becomes exactly these Nodes and counts as synced."""
        states = [s for s in (self._parse(o) for o in objs) if s is not None]
        self.index.replace_all(states)
        self._updated = self._clock()
        self._synced = True
        self._changed()

    def _parse(self, obj: Mapping[str, Any]) -> NodeState | None:
        try:
            state = node_state(obj)
        except ValueError as exc:
            log.warning("ignoring a Node event without a name: %s", exc)
            return None
        if state.problem:
            self.problems.report("node", state.name, state.resource_version, state.problem)
        return state

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def _name(obj: Mapping[str, Any]) -> str | None:
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else None
