"""The one supervisor of background coroutines: log a crash at once, restart after a pause, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

log = logging.getLogger(__name__)


def supervised(
    name: str,
    start: Callable[[], Awaitable[None]],
    *,
    restart_delay: float = 5.0,
    restart_on_return: bool = False,
) -> asyncio.Task[None]:
    """A task running ``start()``: a crash is logged with its traceback and ``start`` runs again after
    ``restart_delay`` s; a normal return ends the task unless ``restart_on_return`` (watch loops)."""

    async def run() -> None:
        while True:
            try:
                await start()
                if not restart_on_return:
                    return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task %s crashed; restarting in %.0f s", name, restart_delay)
            await asyncio.sleep(restart_delay)

    return asyncio.create_task(run(), name=name)


async def stop(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until each has ended."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
