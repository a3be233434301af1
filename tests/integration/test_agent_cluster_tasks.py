"""The agent's cluster tasks (node sync, pod and distribution watches, access policies) run as one
set: when one fails the others are cancelled with it, and the supervisor restarts one set, never
a second copy beside the survivors (what ``asyncio.gather`` did)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from agent.config import Settings
from agent.face.app import Deps, create_app
from agent.lifecycle.modelstate import Wanted
from locality.kube import Kube
from tests.fixtures.fakekube.server import FakeKube
from tests.fixtures.polling import eventually

NODE = "node-a"
Client = Callable[..., Awaitable[TestClient[Any, Any]]]


class GateFailingOnce:
    """An access gate whose first ``run`` fails once the pod watch is open (a sibling is running)."""

    def __init__(self, fake: FakeKube) -> None:
        self.fake = fake
        self.runs = 0
        self.on_change: Callable[[], None] | None = None

    async def run(self) -> None:
        self.runs += 1
        if self.runs == 1:
            await eventually(self._one_pod_watch, what="the first pod watch")
            raise RuntimeError("policy informer failed (test)")
        await asyncio.Event().wait()

    async def _one_pod_watch(self) -> bool:
        return await asyncio.to_thread(self.fake.open_watches, "pods") == 1

    async def filter(self, wanted: Wanted) -> Wanted:
        return wanted

    async def check(self, namespace: str, ref: Any) -> None:
        return None


async def test_a_failing_cluster_task_restarts_the_set_without_duplicating_it(
    fake_kube: FakeKube,
    kube: Kube,
    aiohttp_client: Client,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_kube.add_node(NODE)
    gate = GateFailingOnce(fake_kube)
    settings = Settings(
        cache_dir=tmp_path / "cache", node_name=NODE, token="t0ken", quota_bytes=1 << 30
    ).validate()
    deps = Deps(kube=kube, access=gate, restart_delay=0.05, resync_seconds=300)
    caplog.set_level(logging.ERROR, logger="locality.tasks")
    await aiohttp_client(create_app(settings, deps))

    async def watches(kind: str) -> int:
        return await asyncio.to_thread(fake_kube.open_watches, kind)

    def opened(kind: str) -> int:
        """Watches of ``kind`` ever requested: 2 once the restarted set has opened its own."""
        return sum(1 for r in fake_kube.requests if r.is_watch and r.path.rsplit("/", 1)[-1] == kind)

    await eventually(lambda: gate.runs == 2, what="the restarted set")
    await eventually(
        lambda: opened("pods") >= 2 and opened("modeldistributions") >= 2, what="the restarted set's watches"
    )
    # The restarted set's watches are open; a duplicated set would keep the first ones open beside them.
    await eventually(
        lambda: _all(watches("pods"), watches("modeldistributions")), what="one watch of each kind"
    )
    assert (opened("pods"), opened("modeldistributions")) == (2, 2)
    assert gate.runs == 2
    assert "background task cluster crashed" in caplog.text
    assert "policy informer failed (test)" in caplog.text


async def _all(*counts: Awaitable[int]) -> bool:
    return all(n == 1 for n in await asyncio.gather(*counts))
