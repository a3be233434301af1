"""The part of a load that needs no torch: weights in host memory, every chunk checked.

A committed model (it has a node cache record) is mapped, not copied (``serving.mapped``:
why the mapped pages are the verified bytes, and what that gives up); otherwise, or with
``mapped=False``, the weights are read into private memory as follows.

Each shard is read into one buffer by several worker threads (a task is one record chunk, so
each read is large and sequential and each chunk is hashed by the thread that read it). Pages
not in the page cache are read with ``O_DIRECT`` straight into the destination, cached ones are
copied from the cache (``Source``). A host buffer is one anonymous private map per shard
(page-aligned for ``O_DIRECT``, no zero-fill: its pages are first touched by the read); the
tensors are later views of it (``serving.loader``), so it is read exactly once. Needing no
torch, a CPU load reads while torch and transformers are still importing (``serving.loading``).
``Run`` and ``read_all`` also drive the CUDA pass, whose worker lives in ``serving.loader``.
"""

from __future__ import annotations

import logging
import mmap
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving import mapped as maps
from serving import weights
from serving.integrity import IntegrityError
from serving.reads import ALIGN, Source

log = logging.getLogger(__name__)

BLOCK_BYTES = 16 * 2**20  # one preadv; also the size of each pinned staging buffer on CUDA
WORKERS = 4


@dataclass(frozen=True, slots=True)
class HostWeights:
    """Every shard of a model in host memory, its chunks checked: ``buffers[i]`` is ``plan.shards[i]``.

    ``mapped``: the buffers are maps of the files (``serving.mapped``), else private copies.
    """

    plan: weights.Plan
    buffers: tuple[HostBuffer, ...]
    seconds: float
    mapped: bool = False


HostBuffer = mmap.mmap | maps.FileMap


def read_host(
    model_dir: Path,
    *,
    check: bool = True,
    workers: int = WORKERS,
    block_bytes: int = BLOCK_BYTES,
    mapped: bool = True,
) -> HostWeights:
    """Every shard of ``model_dir`` in host memory and checked, with the small files.

    ``check``: compare each chunk with the node cache record when the directory has one (a
    directory outside a cache loads with header checks only). ``mapped``: map a committed
    model's files instead of copying them (where the kernel can report read errors so).
    Raises ``IntegrityError`` naming the file (and the chunk's byte range) on any damage.
    """
    start = time.perf_counter()
    plan = weights.plan(model_dir, check=check)
    if mapped and plan.record is not None and maps.supported():
        return HostWeights(plan, maps.map_checked(plan, workers), time.perf_counter() - start, True)
    buffers: tuple[HostBuffer, ...] = tuple(host_buffer(s.header.size) for s in plan.shards)
    meanwhile = lambda: weights.check_other_files(plan)  # noqa: E731
    read_all(plan, buffers, cpu_worker, workers, block_bytes, meanwhile=meanwhile)
    return HostWeights(plan, buffers, time.perf_counter() - start)


def read_all(
    plan: weights.Plan,
    buffers: Sequence[Any],
    worker: Callable[[Run], None],
    workers: int,
    block: int,
    *,
    meanwhile: Callable[[], None],
) -> None:
    """Run ``worker`` on ``workers`` threads and ``meanwhile`` on this one (the small files'
    check, overlapped with the weights' reads); the first failure stops the others and is raised."""
    segs = weights.segments(plan)
    sources: list[Source] = []
    try:
        sources.extend(Source(s.header.path) for s in plan.shards)
        run = Run(plan, buffers, sources, segs, block)
        n = max(1, min(workers, len(segs)))
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="serving-load") as pool:
            futures = [pool.submit(run.guarded, lambda: worker(run)) for _ in range(n)]
            run.guarded(meanwhile)
        failures = [exc for exc in (f.exception() for f in futures) if exc is not None]
        if failures:  # inside the try: a worker's read error (EIO) is named like this thread's
            raise failures[0]
    except OSError as exc:
        raise IntegrityError(
            f"{exc.filename or plan.model_dir}: cannot read ({exc.strerror or exc})"
        ) from exc
    finally:
        for source in sources:
            source.close()


class Run:
    """The shared state of one load: the segments left, open files, buffers, the stop flag."""

    def __init__(
        self,
        plan: weights.Plan,
        buffers: Sequence[Any],
        sources: list[Source],
        segs: list[weights.Segment],
        block: int,
    ) -> None:
        self.plan, self.buffers, self.sources, self.block = plan, buffers, sources, block
        self.todo: queue.SimpleQueue[weights.Segment] = queue.SimpleQueue()
        for seg in segs:
            self.todo.put(seg)
        self.stop = threading.Event()

    def guarded(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException:
            self.stop.set()
            raise

    def next(self) -> weights.Segment | None:
        """The next segment, or None when none is left or another worker failed."""
        if self.stop.is_set():
            return None
        try:
            return self.todo.get_nowait()
        except queue.Empty:
            return None

    def read(self, seg: weights.Segment, sink: weights.Sink, filled: weights.Filled) -> None:
        source = self.sources[seg.shard]
        weights.read_segment(source, seg, sink=sink, filled=filled, block=self.block, stop=self.stop)


def cpu_worker(run: Run) -> None:
    """Read straight into the shard's host buffer: that memory becomes the tensors."""
    views = [memoryview(b) for b in run.buffers]
    while (seg := run.next()) is not None:
        run.read(seg, _slicer(views[seg.shard]), _nothing)


def host_buffer(size: int) -> mmap.mmap:
    """Private anonymous memory for one shard, rounded up to whole pages (a direct read of the
    file's tail fills its last page). Unlike ``bytearray`` nothing is zeroed up front."""
    return mmap.mmap(-1, max(1, -(-size // ALIGN) * ALIGN), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _slicer(view: memoryview) -> weights.Sink:
    def sink(offset: int, _n: int) -> memoryview:
        return view[offset:]  # to the buffer's end: room for a direct read's rounded-up tail

    return sink


def _nothing(_offset: int, _n: int, _view: memoryview) -> None:
    return None
