"""A list+watch cache of one kind of Kubernetes object, with change callbacks.

Shape of a client-go reflector: list, then watch from the list's resourceVersion. A watch
the server ends cleanly is resumed from the last seen resourceVersion; a 410, a broken
stream or any error backs off and lists again, and the difference between the old and new
lists is delivered as synthetic ADDED/MODIFIED/DELETED events. A full list also runs every
``resync_seconds``, so a missed event cannot linger.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

from locality.backoff import backoff_delay
from locality.kube import Kind, Kube, KubeError

log = logging.getLogger(__name__)

EventHandler = Callable[[str, dict[str, Any]], Awaitable[None] | None]
# A watch shorter than this that ends without error still waits a back-off before the next one,
# so a server that closes every watch at once cannot spin us; a longer one resets the back-off.
_MIN_HEALTHY_WATCH_SECONDS = 1.0


def object_key(kind: Kind, obj: Mapping[str, Any]) -> str:
    """``namespace/name`` for pods, ``name`` for cluster-scoped kinds."""
    meta = obj.get("metadata") or {}
    if kind == "pods":
        return f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    return str(meta.get("name", ""))


def list_diff(
    old: Mapping[str, dict[str, Any]], new: Mapping[str, dict[str, Any]]
) -> list[tuple[str, dict[str, Any]]]:
    """Events turning ``old`` into ``new``: ADDED for new keys, MODIFIED where the
    resourceVersion differs, DELETED (with the last known object) for keys that went away."""
    events: list[tuple[str, dict[str, Any]]] = []
    for key, obj in new.items():
        if key not in old:
            events.append(("ADDED", obj))
        elif _rv(old[key]) != _rv(obj):
            events.append(("MODIFIED", obj))
    events.extend(("DELETED", obj) for key, obj in old.items() if key not in new)
    return events


def _rv(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


class Informer:
    """Keeps ``items`` equal to the server's view of ``kind`` (filtered by the selectors)."""

    def __init__(
        self,
        kube: Kube,
        kind: Kind,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        on_event: EventHandler | None = None,
        on_error: Callable[[Exception], None] | None = None,
        resync_seconds: float = 300.0,
        watch_timeout_seconds: int = 240,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` stamps ``last_sync`` only; resync and back-off run on the real monotonic clock."""
        self._kube, self.kind = kube, kind
        self._label_selector, self._field_selector = label_selector, field_selector
        self._on_event, self._on_error = on_event, on_error
        self._resync, self._watch_timeout = resync_seconds, watch_timeout_seconds
        self._backoff = (backoff_initial, backoff_max)
        self._rng = rng or random.Random()
        self._clock = clock
        self._items: dict[str, dict[str, Any]] = {}
        self.items: Mapping[str, dict[str, Any]] = MappingProxyType(self._items)
        self.synced = asyncio.Event()
        self.last_sync = 0.0
        self.resource_version = ""
        self.errors = 0  # API errors seen (each also goes to on_error)
        self._failures = 0  # consecutive failed list/watch rounds: the back-off exponent

    async def run(self) -> None:
        """List and watch forever (until cancelled); errors back off and re-list."""
        while True:
            try:
                await self._relist()
                await self._watch_until_resync()
                continue
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self._error(err)
                self._failures += 1
            await asyncio.sleep(self._delay(self._failures))

    def _delay(self, attempt: int) -> float:
        return backoff_delay(attempt, *self._backoff, self._rng.random())

    async def _relist(self) -> None:
        items, resource_version = await self._kube.list(
            self.kind, label_selector=self._label_selector, field_selector=self._field_selector
        )
        fresh = {object_key(self.kind, obj): obj for obj in items}
        events = list_diff(self._items, fresh)
        self._items.clear()
        self._items.update(fresh)
        self.resource_version = resource_version
        self.last_sync = self._clock()
        self.synced.set()
        for kind, obj in events:
            await self._emit(kind, obj)

    async def _watch_until_resync(self) -> None:
        """Watch until the resync is due, resuming from the last resourceVersion after a clean
        end. The failure count (the back-off) resets only after a watch that lasted, so a
        list that works beside a watch that keeps failing still backs off."""
        deadline = time.monotonic() + self._resync
        quick_ends = 0
        while (left := deadline - time.monotonic()) > 0:
            started = time.monotonic()
            stream = self._kube.watch(
                self.kind,
                resource_version=self.resource_version,
                label_selector=self._label_selector,
                field_selector=self._field_selector,
                timeout_seconds=max(1, min(self._watch_timeout, int(left) + 1)),
            )
            try:
                async with contextlib.aclosing(stream):
                    async for event in stream:
                        await self._apply(event.type, event.object)
            finally:
                lasted = time.monotonic() - started >= _MIN_HEALTHY_WATCH_SECONDS
                if lasted:
                    self._failures = 0
            if lasted:
                quick_ends = 0
            else:
                quick_ends += 1
                await asyncio.sleep(self._delay(quick_ends))

    async def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        self.resource_version = _rv(obj) or self.resource_version
        self.last_sync = self._clock()
        if kind == "BOOKMARK":
            return
        key = object_key(self.kind, obj)
        if kind == "DELETED":
            self._items.pop(key, None)
        else:
            self._items[key] = obj
        await self._emit(kind, obj)

    async def _emit(self, kind: str, obj: dict[str, Any]) -> None:
        if self._on_event is None:
            return
        try:
            result = self._on_event(kind, obj)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "%s informer: event handler failed on %s %s", self.kind, kind, object_key(self.kind, obj)
            )

    def _error(self, err: Exception) -> None:
        self.errors += 1
        if isinstance(err, KubeError):
            log.warning("%s informer: %s; listing again after a back-off", self.kind, err)
        else:
            log.exception("%s informer: unexpected error; listing again after a back-off", self.kind)
        if self._on_error is not None:
            try:
                self._on_error(err)
            except Exception:
                log.exception("%s informer: error callback failed", self.kind)
