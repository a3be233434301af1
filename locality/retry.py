"""The one retry loop of ours: try, tell the caller, back off (``locality.backoff``), try again.

Callers keep their own meaning: which errors are worth another try (``transient``), what to log
(``on_retry``), how long to wait (``delay``, usually ``backoff_delay``), and what giving up says:
the last error is raised unchanged, so the caller wraps it as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
E = TypeVar("E", bound=Exception)


def _always(_: object) -> bool:
    return True


def _never(_: object) -> bool:
    return False


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int | None,
    delay: Callable[[int], float],
    errors: type[E],
    transient: Callable[[E], bool] = _always,
    progressed: Callable[[E], bool] = _never,
    on_retry: Callable[[int, E, float], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """``await call()`` until it returns; re-raise a permanent error at once, the last one after
    ``attempts`` tries (``None``: try forever).

    After the ``n``-th failure in a row (1, 2, ...) of ``errors`` that is ``transient``:
    ``on_retry(n, error, delay(n))``, then sleep ``delay(n)`` seconds. A failed try that
    ``progressed`` (e.g. bytes arrived before the connection broke) starts the count again at 0.
    Errors not in ``errors`` (and cancellation) pass through untouched.
    """
    failures = 0
    while True:
        try:
            return await call()
        except errors as exc:
            if not transient(exc):
                raise
            failures = 0 if progressed(exc) else failures + 1
            if attempts is not None and failures >= attempts:
                raise
            wait = delay(failures)
            if on_retry is not None:
                on_retry(failures, exc, wait)
            await sleep(wait)
