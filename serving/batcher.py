"""Dynamic batching: a bounded queue of inputs and the loop that turns them into forward passes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from locality import errors
from serving.metrics import Metrics
from serving.policy import plan_batch, retry_after

log = logging.getLogger(__name__)

Result = tuple[list[float], int]  # (vector, token count) of one input
RunBatch = Callable[[list[str]], Awaitable[tuple[list[list[float]], list[int]]]]


class QueueFull(Exception):
    """The queue cannot take a request now; ``retry_after`` is the advice in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(eq=False)
class _Item:
    text: str
    enqueued: float
    future: asyncio.Future[Result] = field(repr=False)


class Batcher:
    """FIFO of inputs; ``run_forever`` takes up to ``max_batch`` of them per forward pass.

    Admission is all-or-nothing per request: a request whose inputs do not all fit is refused,
    so a client never gets half an answer.
    """

    def __init__(
        self,
        run: RunBatch,
        metrics: Metrics,
        *,
        max_batch: int,
        max_wait: float,
        max_queue: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run = run
        self._metrics = metrics
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self._clock = clock
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._batch_seconds = 0.05  # moving average of a forward pass, for Retry-After

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, texts: Sequence[str]) -> list[asyncio.Future[Result]]:
        """Queue ``texts``; raise ``QueueFull`` when they do not all fit."""
        if len(self._queue) + len(texts) > self.max_queue:
            wait = retry_after(len(self._queue), self.max_batch, self._batch_seconds)
            raise QueueFull(f"queue full ({len(self._queue)}/{self.max_queue} inputs waiting)", wait)
        loop = asyncio.get_running_loop()
        now = self._clock()
        items = [_Item(text, now, loop.create_future()) for text in texts]
        self._queue.extend(items)
        self._metrics.queue_depth.set(len(self._queue))
        self._wake.set()
        return [item.future for item in items]

    async def run_forever(self) -> None:
        """Dispatch batches until cancelled; inputs still queued then get a 503 (shutting down)."""
        try:
            while True:
                batch = await self._next_batch()
                await self._run_batch(batch)
        finally:
            _fail(self._queue, errors.Unavailable("server is shutting down"))
            self._queue.clear()
            self._metrics.queue_depth.set(0)

    async def _next_batch(self) -> list[_Item]:
        while True:
            age = self._clock() - self._queue[0].enqueued if self._queue else 0.0
            take, wait = plan_batch(len(self._queue), age, self.max_batch, self.max_wait)
            if take:
                batch = [self._queue.popleft() for _ in range(take)]
                self._metrics.queue_depth.set(len(self._queue))
                return batch
            self._wake.clear()
            timeout = wait if self._queue else None  # an empty queue sleeps until a submit
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _run_batch(self, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.done()]  # the client may have gone
        if not live:
            return
        start = self._clock()
        for item in live:
            self._metrics.queue_wait.observe(start - item.enqueued)
        self._metrics.batch_size.observe(len(live))
        try:
            vectors, tokens = await self._run([item.text for item in live])
        except asyncio.CancelledError:  # stopping: answer the batch's clients rather than hang them
            _fail(live, errors.Unavailable("server is shutting down"))
            raise
        except Exception as exc:
            log.error("inference failed for a batch of %d: %s", len(live), exc)
            _fail(live, exc)
            return
        elapsed = self._clock() - start
        self._metrics.batch_duration.observe(elapsed)
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed
        for item, vector, count in zip(live, vectors, tokens, strict=True):
            if not item.future.done():
                item.future.set_result((vector, count))


def _fail(items: Iterable[_Item], exc: BaseException) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(exc)
