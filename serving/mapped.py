"""Zero-copy CPU load of a committed model: each shard mapped, every chunk hashed before any tensor.

For a model in the node cache (it has the agent's record) a CPU load maps each weight file and
checks each record chunk (xxh3_128) straight from the map on ``workers`` threads, then hands the
maps to ``serving.loader``, whose tensors are ``torch.frombuffer`` views of them. No byte is
copied: with a warm page cache a load costs the hash and the page tables, not a 2 GB copy into
fresh private memory. Each chunk is first faulted in with ``MADV_POPULATE_READ`` (the kernel
reads a cold chunk with its readahead, GIL released), which reports a disk error as an errno
where touching the map would raise ``SIGBUS``, so a read error still fails the load with the
loader's one-line ``cannot read`` reason. A kernel without it (< 5.14) gets the private copy.

Why the mapped pages are the verified bytes: a committed model file is immutable. The agent
writes only under ``staging/``, commits by renaming the directory into ``models/``, and evicts
or quarantines by renaming it to ``trash/`` before unlinking (an unlinked file's data stay
intact while mapped); peers only read it; the serving pod's mount of the cache is read-only (the
webhook injects it so; a pod that mounts the cache itself chooses for itself). So pages the
kernel reclaims and reads again come from the same, unchanged file. A directory outside a node
cache has no such guarantee (its owner may rewrite it while it is served) and gets the private
copy, as does a load that checks no digest (``--verify full``, checked in a pass before, or
``off``): only the default ``stream`` maps.

What this gives up against the private copy, knowingly: a page reclaimed under memory pressure
is read again from the disk without a new digest check, so silent media corruption arising
after the start would go unseen (the health probe's drift check catches gross damage); a disk
error on such a re-read is ``SIGBUS`` (the server dies and its restart re-verifies: fails
closed); the weights are shared page cache, not the pod's anonymous memory (reclaimable,
charged to whichever cgroup read them first); an evicted model's disk space is freed when the
last server mapping it exits. A root process on the node could change the file under the map;
it could as well change the server's memory. The maps are private and writable (copy on write,
the file opened read-only), so an in-place write by the model code copies the page instead of
crashing the server or reaching the file.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xxhash

from serving import weights
from serving.integrity import Header, IntegrityError
from serving.reads import LIBC, MAP_FAILED  # a foreign call releases the GIL: threads populate at once

MADV_POPULATE_READ = 22  # Linux 5.14; Python 3.11's mmap module does not name it

FileMap = ctypes.Array[ctypes.c_ubyte]  # the bytes of one mapped shard; unmapped when collected


@functools.cache
def supported() -> bool:
    """Whether this kernel populates a map with errors reported (``MADV_POPULATE_READ``)."""
    anon = mmap.mmap(-1, mmap.PAGESIZE)
    first = ctypes.c_char.from_buffer(anon)
    try:
        return _populate(ctypes.addressof(first), mmap.PAGESIZE) == 0
    finally:
        del first  # the map cannot close while a ctypes view of it exists
        anon.close()


def map_checked(plan: weights.Plan, workers: int) -> tuple[FileMap, ...]:
    """Every shard of ``plan`` (which has a record) mapped, each chunk populated and checked.

    Raises ``IntegrityError`` naming the file (and chunk) like the copying reader; the small
    files are checked on this thread meanwhile.
    """
    assert plan.record is not None, "only a committed model's files are immutable"
    maps: list[FileMap] = []
    try:
        maps.extend(map_file(shard.header) for shard in plan.shards)
        _check_all(plan, maps, workers)
    except OSError as exc:
        where = exc.filename or plan.model_dir
        raise IntegrityError(f"{where}: cannot read ({exc.strerror or exc})") from exc
    return tuple(maps)


def map_file(header: Header) -> FileMap:
    """A private map of the whole file (its size checked again: it was validated by path)."""
    fd = os.open(header.path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size != header.size:
            raise IntegrityError(f"{header.path}: changed size while loading (truncated?)")
        prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE
        addr = LIBC.mmap(None, header.size, prot, flags, fd, 0)
        if addr in (None, MAP_FAILED):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(header.path))
    finally:
        os.close(fd)  # the map holds the file
    array = (ctypes.c_ubyte * header.size).from_address(addr)
    weakref.finalize(array, LIBC.munmap, addr, header.size)  # after the last tensor over it
    return array


def _check_all(plan: weights.Plan, maps: Sequence[FileMap], workers: int) -> None:
    segs = weights.segments(plan)
    stop = threading.Event()

    def check(seg: weights.Segment) -> None:
        if stop.is_set():
            return
        try:
            _check(plan.shards[seg.shard].header.path, maps[seg.shard], seg)
        except BaseException:
            stop.set()
            raise

    n = max(1, min(workers, len(segs)))
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="serving-map") as pool:
        futures = [pool.submit(check, seg) for seg in segs]
        try:
            weights.check_other_files(plan)  # overlapped with the chunks, its error first
        except BaseException:
            stop.set()
            raise
    failures = [exc for exc in (f.exception() for f in futures) if exc is not None]
    if failures:
        raise failures[0]


def _check(path: Path, array: FileMap, seg: weights.Segment) -> None:
    """Fault the chunk in (a disk error is an ``OSError`` here, not ``SIGBUS``), then hash it."""
    addr = ctypes.addressof(array) + seg.offset
    if _populate(addr, seg.length) != 0:
        err = ctypes.get_errno()
        err = errno.EIO if err == errno.EFAULT else err  # EFAULT: "a SIGBUS would have been raised"
        raise OSError(err, os.strerror(err), str(path))
    view = memoryview(array).cast("B")[seg.offset : seg.offset + seg.length]
    if xxhash.xxh3_128(view).hexdigest() != seg.digest:
        raise weights.chunk_mismatch(path, seg)


def _populate(addr: int, length: int) -> int:
    return int(LIBC.madvise(addr, length, MADV_POPULATE_READ))
