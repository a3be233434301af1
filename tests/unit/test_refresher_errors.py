"""A refresh that fails, or crashes on a bug, keeps the current revision and says why in the view."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent.fetch.cache import FetchFailed
from agent.lifecycle.refresher import Refresher
from locality.identity import model_ref


class _Cache:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def refresh(self, ref: object, *, expect: str | None) -> None:
        raise self.exc


class _Manager:
    def __init__(self, exc: Exception) -> None:
        self.cache = _Cache(exc)
        self.semaphore = asyncio.Semaphore(1)
        self.notified = 0

    def notify(self) -> None:
        self.notified += 1


FAILURES = {
    "cache error": (
        FetchFailed("s3://models/m: origin answered HTTP 503"),
        "failed: s3://models/m: origin answered HTTP 503",
    ),
    "bug": (KeyError("files"), "failed: internal error: 'files'"),
}


@pytest.mark.parametrize(("exc", "state"), list(FAILURES.values()), ids=list(FAILURES))
async def test_failed_refresh_is_recorded(
    exc: Exception, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    manager = _Manager(exc)
    refresher = Refresher(manager)  # type: ignore[arg-type]
    ref = model_ref("s3://models/m")
    with caplog.at_level(logging.WARNING, logger="agent.lifecycle.refresher"):
        refresher.start(ref)
        task = refresher.tasks[ref.id]
        await task
    assert task.exception() is None, "the task ends cleanly: nothing left unretrieved"
    assert refresher.state(ref.id) == state
    assert manager.notified == 1
    assert any("refresh of s3://models/m" in r.getMessage() for r in caplog.records)
