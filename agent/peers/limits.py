"""The upload budget of one node: a byte-rate token bucket and a cap on concurrent uploads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` bytes per second with ``burst`` bytes of credit; ``reserve`` says how long to wait.

    Reservations may drive the balance negative: the caller then sleeps the returned seconds, so
    concurrent uploads share the rate in arrival order. ``rate`` 0 means unlimited.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = burst
        self._at = clock()

    def reserve(self, n: int) -> float:
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate) - n
        self._at = now
        return max(0.0, -self._tokens / self.rate)


class Uploads:
    """At most ``limit`` uploads at once (a busy node says 503 at once, it does not queue)."""

    def __init__(self, limit: int, rate: float, burst: float = 4 << 20) -> None:
        self.limit = limit
        self.active = 0
        self.bucket = TokenBucket(rate, burst)

    def try_start(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def done(self) -> None:
        self.active -= 1

    async def pace(self, n: int) -> None:
        """Wait until ``n`` more bytes fit the node's upload rate."""
        delay = self.bucket.reserve(n)
        if delay > 0:
            await asyncio.sleep(delay)
