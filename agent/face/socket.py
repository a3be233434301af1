"""The daemon's local socket: ``<root>/agent.sock`` (mode 0600: only the cache's owner may talk to
it, so it needs no token), and how a CLI verb finds the daemon that owns a root or takes the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.store.lock import LOCK_NAME, Busy, Owner

SOCKET_NAME = "agent.sock"
_SUN_PATH_MAX = 100  # sockaddr_un holds 108 bytes; longer paths go through /proc/self/fd


@dataclass(frozen=True)
class Daemon:
    """A running daemon owns the root; talk to it on ``socket``."""

    root: Path
    socket: Path



def open_for_cli(root: Path, *, exclusive: bool, wait: float = 10.0) -> Owner | Daemon:
    """The daemon that owns ``root``, or the lock for this CLI verb (see the module docstring).

    A read-only verb on a root without a lock file takes no lock and creates nothing: no writer
    ever ran there (every writer creates the lock file before it writes).
    """
    lock = root / LOCK_NAME
    if not exclusive and not lock.exists():
        return Owner(root, None, exclusive=False)
    if exclusive:
        root.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, (os.O_RDWR | os.O_CREAT if exclusive else os.O_RDONLY) | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                owner, fd = Owner(root, fd, exclusive), -1
                return owner
            except BlockingIOError:
                pass
            if answers(root / SOCKET_NAME):
                return Daemon(root, root / SOCKET_NAME)
            if time.monotonic() >= deadline:
                raise Busy(f"cache {root} is busy: another model-agent command holds it; try again")
            time.sleep(0.1)
    finally:
        if fd >= 0:
            os.close(fd)


def answers(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket ``path``."""
    if not path.exists():
        return False
    with short_path(path) as where, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(where)
        except OSError:
            return False
    return True


@contextlib.contextmanager
def short_path(path: Path) -> Iterator[str]:
    """``path`` as a socket address: itself when short, else via ``/proc/self/fd/<dir fd>``."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def bind_socket(root: Path) -> socket.socket:
    """A listening socket at ``<root>/agent.sock``, mode 0600 before it gets its public name."""
    final = root / SOCKET_NAME
    tmp = root / f".{SOCKET_NAME}.{os.getpid()}"
    for path in (final, tmp):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead daemon's socket: we hold the lock, so nobody serves it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with short_path(tmp) as where:
            sock.bind(where)
        os.chmod(tmp, 0o600)
        os.rename(tmp, final)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
