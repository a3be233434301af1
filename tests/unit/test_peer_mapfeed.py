"""A live fetch's chunk map as its readers follow it: version tokens, deltas, the long poll, and the
wait for a fetch that has not started here yet."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.peers.chunkmap import FileId, map_from_json, map_version
from agent.peers.holdings import Holdings, LiveFetch, MapFeed
from locality.records import Layout

D = [f"{i:032x}" for i in range(4)]


def live(tmp_path: Path) -> LiveFetch:
    return LiveFetch("m1", "r1", 4, {"a.bin": FileId(16, "e")}, tmp_path, {("a.bin", 0): D[0]})


def test_a_reader_without_a_token_gets_the_whole_map_then_only_news(tmp_path: Path) -> None:
    fetch = live(tmp_path)
    whole = fetch.answer(None)
    version, delta = map_version(whole)
    assert version == fetch.token() and not delta
    assert map_from_json(whole).chunks == {("a.bin", 0): D[0]}
    fetch.done[("a.bin", 1)] = D[1]
    fetch.changed()
    news = fetch.answer(version)
    assert map_version(news) == (fetch.token(), True)
    assert map_from_json(news).chunks == {("a.bin", 1): D[1]}  # only what came since


def test_a_token_of_another_fetch_or_garbage_gets_the_whole_map(tmp_path: Path) -> None:
    fetch, other = live(tmp_path), live(tmp_path)
    fetch.done[("a.bin", 1)] = D[1]
    for since in (other.token(), "x", "", f"{fetch.epoch}.1.99"):
        answer = fetch.answer(since)
        assert map_version(answer)[1] is False and len(map_from_json(answer).chunks) == 2, since


def test_the_long_poll_returns_on_a_change_and_after_its_time(tmp_path: Path) -> None:
    fetch = live(tmp_path)

    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        token = fetch.token()
        started = loop.time()
        waiter = asyncio.create_task(fetch.wait_change(token, 10.0))
        await asyncio.sleep(0.05)
        fetch.changed()
        await asyncio.wait_for(waiter, 1.0)
        woke = loop.time() - started
        started = loop.time()
        await fetch.wait_change(fetch.token(), 0.1)
        return woke, loop.time() - started

    woke, idle = asyncio.run(scenario())
    assert woke < 1.0 and 0.09 <= idle < 1.0


def test_a_reader_waiting_for_a_revision_gets_its_feed_when_the_fetch_starts(tmp_path: Path) -> None:
    holdings = Holdings(Layout(tmp_path))

    async def scenario() -> tuple[MapFeed | None, MapFeed | None, MapFeed | None]:
        waiter = asyncio.create_task(holdings.wait_arrival("m1", "r1", 10.0))
        other = asyncio.create_task(holdings.wait_arrival("m1", "r0", 0.3))  # another revision
        await asyncio.sleep(0.05)
        assert not waiter.done()
        holdings.start(live(tmp_path))
        arrived = await asyncio.wait_for(waiter, 1.0)
        never = await holdings.wait_arrival("m2", "r1", 0.05)
        return arrived, await other, never

    arrived, other, never = asyncio.run(scenario())
    assert arrived is not None and arrived.live is not None and arrived.live.revision == "r1"
    assert other is None and never is None
    assert not holdings._arrivals  # nobody left waiting
