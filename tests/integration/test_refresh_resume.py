"""A refresh interrupted by a restart resumes from its staging instead of starting over."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from agent.config import Settings
from agent.face.app import create_app
from agent.fetch.cache import Cache, Progress
from agent.store.refreshmarks import MARK
from locality.identity import model_ref
from locality.records import Layout
from tests.fixtures.models import write_safetensors
from tests.fixtures.origin import run_origin
from tests.fixtures.polling import eventually

MiB = 2**20
CHUNKS = 8  # the new revision's file: 8 chunks of 1 MiB (plus a few bytes)


def settings(root: Path) -> Settings:
    return Settings(
        cache_dir=root, chunk_bytes=MiB, concurrency=1, quota_bytes=1 << 30, token="t0ken"
    ).validate()


async def test_a_refresh_interrupted_by_a_restart_resumes_its_staging(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], tmp_path: Path
) -> None:
    src, root = tmp_path / "src", tmp_path / "cache"
    write_safetensors(src / "m.bin", 2 * MiB + 3, seed=1)
    with run_origin(src) as origin:
        uri = f"{origin.url}/m.bin"
        ref = model_ref(uri)
        cache = Cache(settings(root))
        cache.scan()
        v1 = await cache.fetch(ref)
        write_safetensors(src / "m.bin", CHUNKS * MiB + 5, seed=2)
        origin.faults.throttle_bps = 8 * MiB  # slow enough to stop it half way
        stop = Stop(3 * MiB)
        refresh = stop.task = asyncio.create_task(cache.refresh(ref, progress=stop))
        await eventually(refresh.done, within=30, what="the refresh stopped half way")
        assert refresh.cancelled()
        staged = Layout(root).stage(ref.id)
        assert (staged / MARK).is_file() and (staged / "journal").read_text().strip()

        # The restart: recovery keeps the marked staging, the agent resumes the refresh.
        origin.faults.throttle_bps = 0
        origin.log.clear()
        client = await aiohttp_client(create_app(settings(root)))

        async def switched() -> bool:
            view = await (await client.get(f"/v1/models/{ref.id}")).json()
            return bool(view.get("revision") not in (None, v1.revision) and view["state"] == "ready")

        await eventually(switched, within=30, what="the resumed refresh switched")
        view = await (await client.get(f"/v1/models/{ref.id}")).json()
    assert size_of(Path(view["path"], "m.bin")) == CHUNKS * MiB + 5
    ranged = [r for r in origin.gets("/m.bin") if r]
    assert 0 < len(ranged) <= CHUNKS + 1 - 3, ranged  # the chunks staged before the restart stay
    assert not staged.exists()  # the commit took the staging (and its mark) away


class Stop:
    """A progress callback that cancels ``task`` once ``limit`` bytes are done (as a restart would)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.loop = limit, asyncio.get_running_loop()
        self.task: asyncio.Task[Any] | None = None

    def __call__(self, p: Progress) -> None:
        if p.bytes_done >= self.limit and self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)


def size_of(path: Path) -> int:
    return path.stat().st_size
