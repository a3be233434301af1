"""Reading a weight file's bytes at the disk's speed: ``O_DIRECT`` for cold pages, the cache for warm.

A page that is not in the page cache is read straight from the disk into the destination: no
page-cache page to allocate, fill and copy out of. On the VMs this project runs on, touching
fresh memory costs about as much as the read itself, so a buffered cold read pays twice (page
cache + destination) and a direct one once (bench/README.md, "Loader"). A range whose pages are
all cached (the agent fetched the model a moment ago) is copied from the cache instead. Which
pages are cached is asked with ``mincore`` on a read-only map of the file: it starts no I/O,
unlike a ``preadv(RWF_NOWAIT)`` probe, which kicks off readahead of the range it fails on.
No torch here; ``serving.weights`` drives it.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from pathlib import Path

from serving.integrity import IntegrityError

ALIGN = 4096  # O_DIRECT: buffer address, file offset and length in multiples of this
PAGE = mmap.PAGESIZE
LIBC = ctypes.CDLL(None, use_errno=True)  # mmap, munmap, mincore, madvise (serving.mapped too)
LIBC.mmap.restype = ctypes.c_void_p
LIBC.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
LIBC.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
LIBC.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MAP_FAILED = ctypes.c_void_p(-1).value


class Source:
    """One weight file, open buffered and (where the file system allows) with ``O_DIRECT``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.direct: int | None = None
        self.direct_ok = True  # False once the file system refused a direct read (EINVAL)
        self.map: int | None = None  # address of a PROT_READ map, only ever passed to mincore
        try:
            self.direct = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except OSError:  # tmpfs and some overlays refuse O_DIRECT: buffered reads only
            return
        # the buffered reads are of cached ranges only: readahead from them would read the cold
        # pages beside them into the cache, the second read this module exists to avoid
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)
        if self.size:
            addr = LIBC.mmap(None, self.size, mmap.PROT_READ, mmap.MAP_SHARED, self.fd, 0)
            self.map = None if addr in (None, MAP_FAILED) else addr

    def close(self) -> None:
        if self.map is not None:
            LIBC.munmap(self.map, self.size)
        for fd in (self.fd, self.direct):
            if fd is not None:
                os.close(fd)

    def fill(self, view: memoryview, n: int, offset: int) -> None:
        """Read bytes ``offset..offset + n`` into ``view[:n]``; raise naming the file if it ends early.

        ``view`` may be longer than ``n``: a direct read of the file's tail rounds its length up
        into it. A range that ends inside the file reads its unaligned end buffered, so no byte
        past ``n`` is written (another worker may own it).
        """
        direct = self.direct is not None and self.direct_ok and not self.cached(offset, n)
        got = 0
        while got < n:
            r = self._direct(view, n, offset, got) if direct else None
            if r is None:
                r = os.preadv(self.fd, [view[got:n]], offset + got)
            else:  # the direct read started at ``got`` rounded down to ALIGN
                start = got & -ALIGN
                r = min(r, n - start) - (got - start)
            if r <= 0:
                raise IntegrityError(f"{self.path}: ended at byte {offset + got} while loading (truncated?)")
            got += r

    def cached(self, offset: int, n: int) -> bool:
        """Whether every page of the range is in the page cache (False when it cannot tell)."""
        if self.map is None or offset >= self.size:
            return False
        first = offset - offset % PAGE
        length = min(offset + n, self.size) - first
        vec = (ctypes.c_ubyte * -(-length // PAGE))()
        if LIBC.mincore(self.map + first, length, vec) != 0:
            return False
        return b"\x00" not in bytes(vec)  # bit 0: resident; the other bits are reserved (0)

    def _direct(self, view: memoryview, n: int, offset: int, got: int) -> int | None:
        """Bytes one ``O_DIRECT`` read returned from ``got`` rounded down; None: not possible here."""
        start = got & -ALIGN
        tail = offset + n >= self.size
        end = min(-(-n // ALIGN) * ALIGN if tail else n & -ALIGN, len(view) & -ALIGN)
        if self.direct is None or (offset + start) % ALIGN or end <= got or _address(view) % ALIGN:
            return None
        try:
            return os.preadv(self.direct, [view[start:end]], offset + start)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.direct_ok = False  # the file system refuses direct reads: buffered from now on (the
            return None  # descriptor stays open until close(): other workers may be using it)


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))
