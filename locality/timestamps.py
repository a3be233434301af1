"""RFC 3339 timestamps the way Kubernetes writes them (``2026-01-01T00:00:00Z``): one writer, one reader.

Pure: the caller passes the epoch seconds (its own clock), so tests are exact.
"""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(epoch: float) -> str:
    """Epoch seconds -> ``YYYY-MM-DDTHH:MM:SSZ`` (UTC, whole seconds, as in ``lastTransitionTime``)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: object) -> float | None:
    """RFC 3339 (``2026-01-01T00:00:00Z``, fractions and offsets too) -> epoch seconds; None when
    absent or not a time. A time without an offset (not RFC 3339, never from the API) counts as UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)).timestamp()
