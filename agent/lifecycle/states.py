"""One model's in-flight state (queued, fetching, failed, evicting) and the small rules around it."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from agent.store.errors import VerificationFailed
from locality import errors
from locality.backoff import backoff_delay
from locality.identity import ModelRef

_MODEL_ID = re.compile(r"^[0-9a-f]{16}$")
MAX_ERROR_CHARS = 1000
MAX_FAILED_JOBS = 256
RETRY_BASE_SECONDS = 10.0
RETRY_MAX_SECONDS = 300.0


@dataclass
class Job:
    """A model that is not (or no longer) simply committed: queued, fetching, failed or evicting."""

    ref: ModelRef
    state: str = "queued"
    bytes_done: int = 0
    bytes_total: int | None = None
    error: str | None = None
    task: asyncio.Task[None] | None = None
    attempts: int = 0
    failed_at: float = 0.0
    expect: str | None = None  # the revision the request pinned (the fetch fails on any other)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.ref.id,
            "uri": self.ref.uri,
            "label": self.ref.label_key,
            "state": self.state,
            "bytes_total": self.bytes_total,
            "bytes_done": self.bytes_done,
            "path": None,
            "error": self.error,
        }


def check_model_id(model_id: str) -> str:
    if not _MODEL_ID.match(model_id):
        raise errors.Invalid("model id must be 16 lower-case hex digits")
    return model_id


def retry_delay(attempts: int) -> float:
    """Back-off before a pinned model that failed is fetched again: ``min(300, 10 * 2**(n-1))`` s."""
    return backoff_delay(attempts, RETRY_BASE_SECONDS, RETRY_MAX_SECONDS)


def is_verification_failure(exc: BaseException) -> bool:
    """A fetch error that means the bytes did not match (size or digest), not a transport failure."""
    return isinstance(exc, VerificationFailed)
