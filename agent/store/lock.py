"""One owner per cache root: an ``flock`` on ``<root>/.lock`` (its socket: ``agent.face.socket``).

A running daemon holds the lock exclusively for its lifetime and serves its API on
``<root>/agent.sock`` (mode 0600: only the cache's owner may talk to it, so it needs no token).
A CLI verb either finds that daemon (the lock is held and the socket answers) and asks it, or
takes the lock itself: shared for read-only verbs, exclusive for verbs that change the cache.
The kernel drops an ``flock`` when its process dies, so a kill -9 never leaves a stale owner.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = ".lock"


class Busy(Exception):
    """Another process holds the cache and no daemon answers on its socket."""


@dataclass
class Owner:
    """A held lock on a cache root (``fd`` is None for a read of a root that has no lock file)."""

    root: Path
    fd: int | None
    exclusive: bool

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def hold(root: Path, *, exclusive: bool, wait: float = 10.0) -> Owner:
    """Take the lock, polling up to ``wait`` seconds; ``Busy`` when it stays held."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return Owner(root, fd, exclusive)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise Busy(f"cache {root} is held by another process") from None
            time.sleep(0.1)
