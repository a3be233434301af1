"""``locality.retry.retry``: the one retry loop (transient vs permanent, give-up, progress, delays)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from locality.retry import retry


class Flaky(Exception):
    def __init__(self, message: str, *, permanent: bool = False, progressed: bool = False) -> None:
        super().__init__(message)
        self.permanent, self.progressed = permanent, progressed


class Script:
    """A call that raises the scripted errors in turn, then returns ``"ok"``; records the sleeps."""

    def __init__(self, *outcomes: Exception) -> None:
        self.outcomes, self.calls, self.slept, self.told = list(outcomes), 0, [], []  # type: ignore[var-annotated]

    async def __call__(self) -> str:
        self.calls += 1
        if self.outcomes:
            raise self.outcomes.pop(0)
        return "ok"

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def on_retry(self, n: int, exc: Flaky, delay: float) -> None:
        self.told.append((n, str(exc), delay))


async def run(script: Script, attempts: int | None, delay: Callable[[int], float] = float) -> str:
    return await retry(
        script,
        attempts=attempts,
        delay=delay,
        errors=Flaky,
        transient=lambda exc: not exc.permanent,
        progressed=lambda exc: exc.progressed,
        on_retry=script.on_retry,
        sleep=script.sleep,
    )


async def test_transient_errors_are_retried_with_the_nth_delay() -> None:
    script = Script(Flaky("a"), Flaky("b"))
    assert await run(script, attempts=3, delay=lambda n: 10.0 * n) == "ok"
    assert script.calls == 3 and script.slept == [10.0, 20.0]
    assert script.told == [(1, "a", 10.0), (2, "b", 20.0)]


async def test_the_last_error_is_raised_after_attempts_tries() -> None:
    script = Script(Flaky("a"), Flaky("b"), Flaky("c"))
    with pytest.raises(Flaky, match=r"^b$"):
        await run(script, attempts=2)
    assert script.calls == 2 and script.slept == [1.0]


async def test_a_permanent_error_is_raised_at_once() -> None:
    script = Script(Flaky("gone", permanent=True))
    with pytest.raises(Flaky, match="gone"):
        await run(script, attempts=5)
    assert script.calls == 1 and script.slept == [] and script.told == []


async def test_errors_of_another_kind_pass_through() -> None:
    script = Script(KeyError("bug"))
    with pytest.raises(KeyError):
        await run(script, attempts=5)
    assert script.calls == 1 and script.slept == []


async def test_a_try_that_progressed_starts_the_count_again() -> None:
    # attempts=2 would give up at the second failure in a row; progress in between resets the count.
    script = Script(Flaky("a"), Flaky("b", progressed=True), Flaky("c"), Flaky("d"))
    with pytest.raises(Flaky, match=r"^d$"):
        await run(script, attempts=2)
    assert [n for n, _, _ in script.told] == [1, 0, 1]
    assert script.calls == 4


async def test_attempts_none_retries_until_success() -> None:
    script = Script(*(Flaky(str(i)) for i in range(20)))
    assert await run(script, attempts=None) == "ok"
    assert script.calls == 21 and len(script.slept) == 20
