"""Which fetch failures count as verification failures (the metric operators alert on)."""

from __future__ import annotations

import pytest

from agent.fetch.cache import FetchFailed, NoSpace, VerificationFailed
from agent.lifecycle.states import is_verification_failure

CASES = {
    "bytes did not match": (VerificationFailed("m.safetensors is incomplete (1 of 2 bytes)"), True),
    "origin refused": (FetchFailed("403 Forbidden from the origin"), False),
    "a message that merely mentions digests": (FetchFailed("origin digest header missing"), False),
    "disk full": (NoSpace("disk full while fetching; staging removed"), False),
    "local I/O": (OSError(5, "Input/output error"), False),
}


@pytest.mark.parametrize(("error", "counts"), list(CASES.values()), ids=list(CASES))
def test_verification_failures_are_classified_by_type(error: Exception, counts: bool) -> None:
    assert is_verification_failure(error) is counts
