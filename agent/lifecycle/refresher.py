"""The "latest" semantics: re-check each model's origin on a schedule and on request, fetch a changed
one as a new revision beside the old one and switch when it is verified (``Cache.refresh``).

While a refresh runs the model stays ready at its current revision (labels unchanged); its REST
view says ``"refresh": "fetching"`` (or the last refresh error). A ``revision`` in a request pins
what must be served: the origin's current revision must match it, else the request fails (409).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any, Protocol

from agent.fetch.cache import Cache
from agent.store.errors import CacheError
from agent.store.revswitch import same_revision
from locality import errors
from locality.identity import InvalidURI, ModelRef, model_ref

log = logging.getLogger(__name__)
_IMMUTABLE = re.compile(r"^hf://[^?]*@[0-9a-f]{40}(\?|$)")  # a Hub commit never changes


class Host(Protocol):
    """What the refresher needs of the model manager that owns it (and nothing more)."""

    cache: Cache

    @property
    def semaphore(self) -> asyncio.Semaphore: ...

    def busy(self) -> set[str]: ...

    def notify(self) -> None: ...

    async def after_switch(self, model_id: str) -> None: ...


class Refresher:
    """The refresh tasks of one manager (one per model at a time)."""

    def __init__(self, manager: Host) -> None:
        self._manager = manager
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.errors: dict[str, str] = {}

    async def request(self, ref: ModelRef, *, refresh: bool, revision: str | None) -> dict[str, Any] | None:
        """Handle ``refresh``/``revision`` of a POST; None: the plain request path goes on."""
        cache = self._manager.cache
        current = cache.get(ref.id)
        if revision is not None:
            if current is not None and same_revision(current.revision, revision):
                return None
            try:
                now = await cache.origin_revision(ref)
            except CacheError as exc:
                raise errors.Unavailable(f"cannot check the revision of {ref.uri}: {exc}") from exc
            if not same_revision(now, revision):
                raise errors.Conflict(
                    f"{ref.uri}: the origin holds revision {now}, not the requested {revision} "
                    "(only the origin's current revision can be fetched)"
                )
        if current is None:
            return None
        if refresh or revision is not None:
            self.start(ref, expect=revision)
        return {"id": ref.id, "label": ref.label_key, "state": "ready", "refresh": self.state(ref.id)}

    def start(self, ref: ModelRef, *, expect: str | None = None) -> None:
        if ref.id in self.tasks:
            return
        self.errors.pop(ref.id, None)
        task = asyncio.create_task(self._refresh(ref, expect), name=f"refresh-{ref.id}")
        self.tasks[ref.id] = task
        task.add_done_callback(lambda _: self.tasks.pop(ref.id, None))

    def state(self, model_id: str) -> str | None:
        """``fetching`` while a refresh runs, ``failed: ...`` after one failed, else None."""
        if model_id in self.tasks:
            return "fetching"
        error = self.errors.get(model_id)
        return f"failed: {error}" if error else None

    def annotate(self, view: dict[str, Any]) -> dict[str, Any]:
        state = self.state(str(view.get("id")))
        return {**view, "refresh": state} if state else view

    async def run(self, interval: float) -> None:
        """Every ``interval`` seconds, refresh each current revision that has one recorded (records
        from before revisions are left alone: refetching them all at once would be a stampede)."""
        while True:
            await asyncio.sleep(interval)
            for record in self._manager.cache.records():
                if record.superseded or record.revision is None or _IMMUTABLE.match(record.uri):
                    continue
                if record.id in self._manager.busy():
                    continue
                with contextlib.suppress(InvalidURI):
                    self.start(model_ref(record.uri))

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _refresh(self, ref: ModelRef, expect: str | None) -> None:
        manager = self._manager
        try:
            async with manager.semaphore:
                record = await manager.cache.refresh(ref, expect=expect)
        except (CacheError, OSError) as exc:
            self._failed(ref, str(exc) or type(exc).__name__)
            log.warning("refresh of %s failed (the current revision stays): %s", ref.uri, exc)
            return
        except Exception as exc:  # a bug: logged now and shown in the view, never lost in the task
            self._failed(ref, f"internal error: {exc}")
            log.exception("refresh of %s crashed (the current revision stays)", ref.uri)
            return
        if record is not None:
            log.info("model %s switched to revision %s", ref.uri, record.revision)
            await manager.after_switch(ref.id)

    def _failed(self, ref: ModelRef, error: str) -> None:
        self.errors[ref.id] = error[:500]
        self._manager.notify()
