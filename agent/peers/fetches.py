"""The fetch path with peers: ``Fetches`` whose chunk transfer is a ``SwarmFetcher`` (same listing,
staging, commit and origin checksums as without peers)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from agent.fetch.chunks import ByteCounter
from agent.fetch.run import Fetches, Progress, _tick
from agent.fetch.sources import Source, SourceError
from agent.peers.swarm import PeerNet, SwarmFetcher, Tally
from agent.store.errors import FetchFailed
from agent.store.files import RemoteFile, revision_of
from agent.store.staging import ChunkKey, Staging
from locality.identity import ModelRef


class PeerFetches(Fetches):
    """``Fetches`` over the origin and this agent's peers; ``tallies`` keeps each model's last."""

    def __init__(self, *args: Any, net: PeerNet, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.net = net
        self.tallies: dict[str, Tally] = {}

    async def _run_fetcher(
        self,
        *,
        ref: ModelRef,
        source: Source,
        staging: Staging,
        files: list[RemoteFile],
        done: dict[ChunkKey, str],
        progress: Callable[[Progress], None],
    ) -> dict[ChunkKey, str]:
        total = sum(f.size for f in files)
        counter = ByteCounter()
        fetcher = SwarmFetcher(
            source,
            staging,
            net=self.net,
            model_id=ref.id,
            revision=revision_of(files),
            chunk_bytes=self.settings.chunk_bytes,
            concurrency=self.settings.concurrency,
            retry=self._retry,
            on_bytes=counter.add,
        )
        self.tallies[ref.id] = fetcher.tally
        ticker = asyncio.create_task(_tick(counter, total, progress))
        try:
            done = await fetcher.run(files, done)
        except SourceError as exc:
            if exc.permanent:
                await asyncio.to_thread(staging.remove)
            raise FetchFailed(exc.message) from exc
        finally:
            ticker.cancel()
            with suppress(asyncio.CancelledError):
                await ticker
        progress(Progress(min(counter.value, total), total))
        return done
