"""How long a source may keep us waiting: connect and read timeouts of every request to an origin."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Timeouts:
    """``connect``: seconds to open a connection; ``read``: seconds without a byte of the answer.

    Retries are ours (logged as they happen), so a library's own retry loop is switched off.
    """

    connect: float = 10.0
    read: float = 30.0
