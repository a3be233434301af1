"""The cache a caller uses: the store (``agent.store.cache.Store``) with its fetch path attached.

The composition root of the two rooms: ``Cache`` is a ``Store`` whose ``fetch``, ``refresh`` and
``origin_revision`` go through ``agent.fetch.run.Fetches``. The store never imports this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.config import Settings
from agent.fetch.chunks import RetryPolicy
from agent.fetch.run import Fetches, Movers, Progress
from agent.fetch.sources import Source
from agent.store.cache import Store
from agent.store.errors import (
    CacheError,
    FetchFailed,
    NoSpace,
    Pinned,
    UnknownModel,
    VerificationFailed,
)
from locality.identity import ModelRef
from locality.records import ModelRecord

__all__ = [
    "Cache",
    "CacheError",
    "FetchFailed",
    "NoSpace",
    "Pinned",
    "Progress",
    "UnknownModel",
    "VerificationFailed",
]


class Cache(Store):
    """A cache root that can fetch: the store plus ``Fetches`` over it."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_change: Callable[[str], None] | None = None,
        now: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
        sources: Callable[[ModelRef], Source] | None = None,
        movers: Movers | None = None,
    ) -> None:
        super().__init__(settings, on_change=on_change, now=now)
        self.fetches = Fetches(self, settings, retry=retry, sources=sources, movers=movers)

    async def fetch(
        self,
        ref: ModelRef,
        progress: Callable[[Progress], None] | None = None,
        *,
        expect: str | None = None,
    ) -> ModelRecord:
        """Fetch and commit ``ref`` (or return its record at once); see ``Fetches.fetch``."""
        return await self.fetches.fetch(ref, progress, expect=expect)

    async def refresh(
        self,
        ref: ModelRef,
        progress: Callable[[Progress], None] | None = None,
        *,
        expect: str | None = None,
    ) -> ModelRecord | None:
        """Fetch ``ref``'s new revision beside the current one; see ``Fetches.refresh``."""
        return await self.fetches.refresh(ref, progress, expect=expect)

    async def origin_revision(self, ref: ModelRef) -> str:
        return await self.fetches.origin_revision(ref)
