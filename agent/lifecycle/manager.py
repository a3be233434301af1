"""The model manager: one state machine per model on top of the cache.

States: ``queued -> fetching -> ready | failed``, and ``evicting`` while a DELETE removes a
committed model. One fetch task per model (concurrent requests share it), at most
``settings.max_parallel_models`` fetching at once, tasks independent of the HTTP request that
started them (a client that disconnects does not cancel a fetch). Pins come from the watchers
(pods on this node, distributions targeting it) and are written through to the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.config import Settings
from agent.fetch.cache import Cache, CacheError, Pinned, Progress, UnknownModel
from agent.lifecycle.modelstate import FetchRate, ModelState, Wanted
from agent.lifecycle.pins import Pins
from agent.lifecycle.refresher import Refresher
from agent.lifecycle.states import (
    MAX_ERROR_CHARS,
    MAX_FAILED_JOBS,
    RETRY_BASE_SECONDS,
    Job,
    check_model_id,
    is_verification_failure,
    retry_delay,
)
from agent.lifecycle.views import cache_views, states_of
from agent.metrics import AgentMetrics
from agent.store.revswitch import same_revision
from locality import errors
from locality.identity import InvalidURI, ModelRef, model_ref

log = logging.getLogger(__name__)


class ModelManager:
    """Owns the cache and every model's state; the REST handlers and the watchers call it."""

    def __init__(
        self,
        settings: Settings,
        metrics: AgentMetrics,
        *,
        cache_factory: Callable[..., Cache] = Cache,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.cache = cache_factory(settings, on_change=self._cache_changed)
        metrics.track_pins(self._pinned_bytes, self._high_watermark_bytes)
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._sem = asyncio.Semaphore(settings.max_parallel_models)
        self._listeners: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._known_ready: set[str] = set()
        self._deleting: set[str] = set()
        self._scanned = False  # the scrape-time gauges read the cache only after start()'s scan
        self.pins = Pins(self.cache)
        self._closing = False
        self.fetch_rate = FetchRate()  # advertised on the Node (agent.cluster.nodesync)
        self.refresher = Refresher(self)
        self._revisions: dict[str, str] = {}  # model id -> revision its distribution pins
        self._asked: dict[str, str] = {}  # model id -> revision last refreshed to for that pin

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Scan the cache (recovering from a crash) and publish the initial state."""
        self._loop = asyncio.get_running_loop()
        records = await asyncio.to_thread(self.cache.scan)
        self._known_ready = {r.id for r in records}
        self._scanned = True
        log.info("cache scanned: %d committed model(s) in %s", len(records), self.settings.cache_dir)
        for ref in self.cache.wanted():  # accepted over REST before a restart: resume them
            if ref.id not in self._jobs:
                log.info("resuming the fetch of %s accepted before the restart", ref.uri)
                self._start(ref, None)
        for uri, expect in self.cache.interrupted_refreshes():
            with contextlib.suppress(InvalidURI):
                log.info("resuming the refresh of %s interrupted by the restart", uri)
                self.refresher.start(model_ref(uri), expect=expect)
        self._changed()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (in the event loop) after every state change."""
        self._listeners.append(listener)

    async def close(self, grace: float) -> None:
        """Stop taking work, cancel running fetches (the cache checkpoints them), wait <= ``grace``."""
        self._closing = True
        await self.refresher.close()
        tasks = [job.task for job in self._jobs.values() if job.task and not job.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                log.warning("%d fetch task(s) did not stop within %.0fs", len(pending), grace)

    # -- requests ----------------------------------------------------------------------------

    async def request(
        self, ref: ModelRef, *, refresh: bool = False, revision: str | None = None
    ) -> dict[str, Any]:
        """Make sure ``ref`` is (being) fetched; idempotent. Returns ``{"id", "label", "state"}``.
        ``refresh``: re-check the origin of a cached model now; ``revision``: the origin must hold
        that revision (``agent.refresher``)."""
        if self._closing:
            raise errors.Unavailable("agent is shutting down")
        job = self._jobs.get(ref.id)
        if job is None and (refresh or revision is not None):
            answer = await self.refresher.request(ref, refresh=refresh, revision=revision)
            if answer is not None:
                return answer
            job = self._jobs.get(ref.id)
        if job is not None and job.state == "evicting":
            raise errors.Conflict("model is being removed; retry when the removal is done")
        if job is None and self.cache.get(ref.id) is not None:
            # A size + mtime check of every file: damaged bytes are never reported ready.
            if await asyncio.to_thread(self.cache.confirm, ref.id) is not None:
                with contextlib.suppress(CacheError, OSError):
                    await asyncio.to_thread(self.cache.touch, ref.id)
                return {"id": ref.id, "label": ref.label_key, "state": "ready"}
            self.metrics.verification_failures.inc()
            job = self._jobs.get(ref.id)  # another request may have started it meanwhile
        if job is None or job.state == "failed":
            # Durable before the 202: a restart resumes what was accepted (a kill -9 included).
            await asyncio.to_thread(self.cache.want, ref)
            job = self._jobs.get(ref.id)  # a concurrent request may have started it meanwhile
        if job is None or job.state == "failed":
            job = self._start(ref, job, expect=revision)
        return {"id": ref.id, "label": ref.label_key, "state": job.state}

    def view(self, model_id: str) -> dict[str, Any]:
        job = self._jobs.get(check_model_id(model_id))
        if job is not None:
            return job.view()
        for view in self._cache_views():
            if view["id"] == model_id:
                return self.refresher.annotate(view)
        raise errors.NotFound(f"unknown model {model_id}")

    def views(self) -> list[dict[str, Any]]:
        """Every model: jobs over committed over partial over quarantined (one view per id)."""
        views: dict[str, dict[str, Any]] = {}
        for view in self._cache_views():
            views.setdefault(view["id"], self.refresher.annotate(view))
        views.update({mid: job.view() for mid, job in self._jobs.items()})
        return [views[mid] for mid in sorted(views)]

    def _cache_views(self) -> list[dict[str, Any]]:
        return cache_views(self.cache)

    async def verify(self, model_id: str, *, repair: bool = False) -> dict[str, Any]:
        """Re-hash a committed model; with ``repair``, drop a damaged one and fetch it again."""
        record = self.cache.get(check_model_id(model_id))
        if record is None:
            raise errors.NotFound(f"no model {model_id!r} in {self.settings.cache_dir}")
        problems = await asyncio.to_thread(self.cache.verify, model_id)
        if problems:
            self.metrics.verification_failures.inc()
        if problems and repair and model_id not in self._jobs:
            await asyncio.to_thread(self.cache.drop, model_id, "; ".join(problems[:3]))
            self._start(model_ref(record.uri), None, persist=True)
        return {
            "id": model_id,
            "uri": record.uri,
            "problems": problems,
            "repairing": bool(problems and repair),
        }

    async def gc(self) -> dict[str, Any]:
        evicted = await asyncio.to_thread(self.cache.gc)
        used, quota = self.cache.usage()
        return {"evicted": evicted, "used": used, "quota": quota}

    async def delete(self, model_id: str, *, force: bool = False) -> dict[str, Any]:
        """Remove a model (or abandon its fetch, or free a partial or quarantined one); 409 while
        pinned unless ``force``, 404 when unknown."""
        check_model_id(model_id)
        job, record = self._jobs.get(model_id), self.cache.get(model_id)
        if job is None and record is None:
            try:
                await asyncio.to_thread(self.cache.remove, model_id, force=True)  # staged or quarantined
            except UnknownModel as exc:
                raise errors.NotFound(f"unknown model {model_id}") from exc
            self._changed()
            return {"id": model_id, "label": None, "state": "evicting"}
        pins = set(self.pins.reasons(model_id)) | set(record.pins if record else ())
        if pins and not force:
            raise errors.Conflict(f"model is pinned by {', '.join(sorted(pins)[:5])}")
        if job is not None and job.state == "evicting":
            return job.view()
        # The removal runs in its own task so a client that disconnects cannot interrupt it.
        return await asyncio.shield(asyncio.ensure_future(self._delete(model_id, job, force=force)))

    async def _delete(self, model_id: str, job: Job | None, *, force: bool = False) -> dict[str, Any]:
        if job is not None and job.task is not None and not job.task.done():
            job.task.cancel()
            await asyncio.gather(job.task, return_exceptions=True)
        ref = job.ref if job else None
        record = self.cache.get(model_id)
        if record is None:
            self._jobs.pop(model_id, None)
            with contextlib.suppress(UnknownModel, CacheError, OSError):
                await asyncio.to_thread(self.cache.remove, model_id, force=True)  # staged bytes
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.cache.unwant, model_id)
            self._changed()
            return {"id": model_id, "label": ref.label_key if ref else None, "state": "evicting"}
        evicting = Job(ref=model_ref(record.uri), state="evicting", bytes_total=record.total_bytes)
        self._jobs[model_id] = evicting
        self._deleting.add(model_id)
        self._changed()
        try:
            await asyncio.to_thread(self.cache.remove, model_id, force=force)
        except Pinned as exc:
            raise errors.Conflict(f"model is pinned: {exc}") from exc
        finally:
            self._jobs.pop(model_id, None)
            self._deleting.discard(model_id)
            self._changed()
        return {"id": model_id, "label": evicting.ref.label_key, "state": "evicting"}

    # -- fetching ----------------------------------------------------------------------------

    def _start(
        self, ref: ModelRef, previous: Job | None, *, persist: bool = False, expect: str | None = None
    ) -> Job:
        """Start a fetch task; ``persist``: remember it on disk first, so a restart resumes it."""
        job = Job(ref=ref, attempts=(previous.attempts if previous else 0) + 1, expect=expect)
        self._jobs[ref.id] = job
        job.task = asyncio.create_task(self._fetch(job, persist), name=f"fetch-{ref.id}")
        self._changed()
        return job

    async def _fetch(self, job: Job, persist: bool = False) -> None:
        ref, started, outcome = job.ref, self._clock(), "failed"
        try:
            if persist:
                await asyncio.to_thread(self.cache.want, ref)
            async with self._sem:
                job.state = "fetching"
                self._changed()
                fetching_since = self._clock()
                record = await self.cache.fetch(
                    ref, progress=lambda p: self._progress(job, p), expect=job.expect
                )
            self.fetch_rate.record(job.bytes_done, self._clock() - fetching_since)
            outcome = "ready"
            self._known_ready.add(ref.id)
            if self._jobs.get(ref.id) is job:
                del self._jobs[ref.id]
            log.info("model %s ready (%s, %d bytes)", ref.id, ref.uri, record.total_bytes)
            self._changed()
            await self.pins.apply(ref.id)
            await self._gc()
        except asyncio.CancelledError:
            if outcome != "ready":  # cancelled after the commit (in gc): the model stays ready
                outcome = "cancelled"
                self._fail(job, "fetch cancelled (agent stopping or model deleted)")
            raise
        except (CacheError, OSError) as exc:
            if is_verification_failure(exc):
                self.metrics.verification_failures.inc()
            if isinstance(exc, CacheError):  # permanent: a restart must not retry it
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(self.cache.unwant, ref.id)
            self._fail(job, str(exc) or type(exc).__name__)
            log.warning("fetch of %s failed: %s", ref.uri, exc, exc_info=not isinstance(exc, CacheError))
        except Exception as exc:
            log.exception("fetch of %s crashed", ref.uri)
            if outcome != "ready":
                self._fail(job, f"internal error: {exc}")
        finally:
            self.metrics.fetch_duration.labels(outcome=outcome).observe(self._clock() - started)

    def _fail(self, job: Job, error: str) -> None:
        job.state, job.error, job.failed_at = "failed", error[:MAX_ERROR_CHARS], self._clock()
        # Failed entries stay until a retry or DELETE; keep only the newest few hundred so that
        # clients POSTing many bad URIs cannot grow memory without bound.
        failed = sorted((j.failed_at, mid) for mid, j in self._jobs.items() if j.state == "failed")
        for _, mid in failed[: max(0, len(failed) - MAX_FAILED_JOBS)]:
            if not self.pins.reasons(mid):
                del self._jobs[mid]
        self._changed()

    def _progress(self, job: Job, progress: Progress) -> None:
        delta = progress.bytes_done - job.bytes_done
        if delta > 0:
            self.metrics.fetched_bytes.labels(scheme=job.ref.scheme).inc(delta)
        job.bytes_done = progress.bytes_done
        job.bytes_total = progress.bytes_total

    # -- for the refresher --------------------------------------------------------------------

    @property
    def semaphore(self) -> asyncio.Semaphore:
        return self._sem

    def busy(self) -> set[str]:
        """Models with a fetch, failure or removal in flight (not to be refreshed now)."""
        return set(self._jobs)

    def notify(self) -> None:
        self._changed()

    async def after_switch(self, model_id: str) -> None:
        """A model switched to a new revision: publish, re-pin, and let eviction run."""
        self._changed()
        await self.pins.apply_all()
        await self._gc()

    async def _gc(self) -> None:
        try:
            await asyncio.to_thread(self.cache.gc)
        except (CacheError, OSError) as exc:
            log.warning("cache gc failed: %s", exc)

    # -- models wanted by the watchers -------------------------------------------------------

    def set_wanted(self, wanted: Wanted, revisions: Mapping[str, str] | None = None) -> None:
        """The watchers' answer: models this node must hold, with their pin reasons, and the
        revision a ModelDistribution pins for some of them (fetched at that revision only)."""
        self._revisions = dict(revisions or {})
        self.pins.set(wanted)

    async def run(self) -> None:
        """Start fetches for wanted models, retry failed ones with back-off, keep pins in step."""
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pins.changed.wait(), timeout=RETRY_BASE_SECONDS / 2)
            self.pins.changed.clear()
            if self._closing or not self.pins.known:
                continue
            for model_id, (ref, reasons) in self.pins.wanted.items():
                job, expect = self._jobs.get(model_id), self._revisions.get(model_id)
                record = self.cache.get(model_id)
                if job is None and record is None:
                    log.info("fetching %s for %s", ref.uri, ", ".join(sorted(reasons)))
                    self._start(ref, None, expect=expect)
                elif (
                    job is not None
                    and job.state == "failed"
                    and (job.expect != expect or self._clock() - job.failed_at >= retry_delay(job.attempts))
                ):
                    self._start(ref, job, expect=expect)
                elif job is None and record is not None and expect is not None:
                    self._follow_revision(ref, record.revision, expect)
            await self.pins.apply_all()

    def _follow_revision(self, ref: ModelRef, have: str | None, expect: str) -> None:
        """A cached model whose distribution pins another revision: refresh it to that revision
        once per pinned value (a failure stays in the view's ``refresh`` until the pin changes)."""
        if same_revision(have, expect) or self._asked.get(ref.id) == expect:
            return
        self._asked[ref.id] = expect
        log.info("refreshing %s to revision %s pinned by its distribution", ref.uri, expect)
        self.refresher.start(ref, expect=expect)

    # -- state for labels and metrics --------------------------------------------------------

    def model_states(self) -> list[ModelState]:
        return states_of(self.cache.records(), self._jobs)

    def _cache_changed(self, model_id: str) -> None:
        """The cache's ``on_change`` hook; it may run in a worker thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._on_cache_change, model_id)

    def _on_cache_change(self, model_id: str) -> None:
        if self.cache.get(model_id) is None:
            if model_id in self._known_ready and model_id not in self._deleting:
                self.metrics.evictions.inc()
                log.info("model %s evicted", model_id)
            self._known_ready.discard(model_id)
        else:
            self._known_ready.add(model_id)
        self._changed()

    def _pinned_bytes(self) -> int:
        """Committed bytes eviction may not free (read at scrape time: pins change no state)."""
        return self.cache.pinned_bytes() if self._scanned else 0

    def _high_watermark_bytes(self) -> int:
        return self.cache.high_watermark_bytes() if self._scanned else 0

    def _changed(self) -> None:
        self.metrics.set_model_counts(s.state for s in self.model_states())
        self.metrics.quarantined.set(len(self.cache.quarantined()))
        with contextlib.suppress(OSError):  # a sum over records plus one statvfs: cheap
            self.metrics.set_usage(*self.cache.usage())
        for listener in self._listeners:
            listener()
