"""The batcher's queue and dispatch loop with a plain async function in place of the model."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from locality import errors
from serving.batcher import Batcher, QueueFull
from serving.metrics import Metrics


class Model:
    """Answers ``[len(text)]`` per input; can be held (to fill the queue) or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail: Exception | None = None
        self.started = asyncio.Event()

    async def __call__(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        self.batches.append(texts)
        self.started.set()
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [[float(len(t))] for t in texts], [len(t) for t in texts]


@contextlib.asynccontextmanager
async def running(batcher: Batcher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(batcher.run_forever())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make(model: Model, **kw: float) -> Batcher:
    opts = {"max_batch": 4, "max_wait": 0.001, "max_queue": 8, **kw}
    return Batcher(
        model,
        Metrics(),
        max_batch=int(opts["max_batch"]),
        max_wait=opts["max_wait"],
        max_queue=int(opts["max_queue"]),
    )


async def test_results_come_back_in_order_and_batches_respect_max_batch() -> None:
    model = Model()
    batcher = make(model, max_wait=10.0)
    async with running(batcher):
        futures = batcher.submit(["a", "bb", "ccc", "dddd", "eeeee", "ffffff"])
        first = await asyncio.gather(*futures[:4])
        assert first == [([1.0], 1), ([2.0], 2), ([3.0], 3), ([4.0], 4)]
        more = batcher.submit(["g", "h"])  # fills the second batch to 4
        assert await asyncio.gather(*futures[4:], *more) == [([5.0], 5), ([6.0], 6), ([1.0], 1), ([1.0], 1)]
    assert [len(b) for b in model.batches] == [4, 4]


async def test_a_lone_input_goes_after_max_wait() -> None:
    model = Model()
    batcher = make(model, max_wait=0.01)
    async with running(batcher):
        assert await asyncio.wait_for(batcher.submit(["solo"])[0], 5) == ([4.0], 4)
    assert model.batches == [["solo"]]


async def test_admission_is_all_or_nothing() -> None:
    model = Model()
    model.release.clear()
    batcher = make(model, max_batch=1, max_queue=3)
    async with running(batcher):
        held = batcher.submit(["running"])
        await model.started.wait()
        queued = batcher.submit(["q1", "q2"])
        assert batcher.depth == 2
        with pytest.raises(QueueFull) as info:
            batcher.submit(["x", "y"])  # one slot is free, but the request needs two
        assert info.value.retry_after >= 1 and batcher.depth == 2
        assert len(batcher.submit(["fits"])) == 1
        model.release.set()
        await asyncio.gather(*held, *queued)


async def test_a_failed_batch_fails_only_its_inputs() -> None:
    model = Model()
    batcher = make(model, max_batch=2, max_wait=0.0)
    async with running(batcher):
        model.fail = RuntimeError("CUDA out of memory")
        bad = batcher.submit(["a", "b"])
        results = await asyncio.gather(*bad, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        model.fail = None
        assert await batcher.submit(["c"])[0] == ([1.0], 1)


async def test_cancelled_inputs_are_skipped() -> None:
    model = Model()
    batcher = make(model, max_wait=0.05)
    async with running(batcher):
        gone, kept = batcher.submit(["client left", "stays"])
        gone.cancel()
        assert await kept == ([5.0], 5)
    assert model.batches == [["stays"]]


async def test_stopping_fails_queued_inputs_with_503() -> None:
    model = Model()
    model.release.clear()
    batcher = make(model, max_batch=1)
    async with running(batcher):
        running_one = batcher.submit(["running"])[0]
        await model.started.wait()
        waiting = batcher.submit(["waiting"])[0]
    for future in (running_one, waiting):  # both clients get an answer; none is left hanging
        with pytest.raises(errors.Unavailable) as info:
            await future
        assert "shutting down" in info.value.message
