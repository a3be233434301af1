"""One pass from the node cache to the device: parallel large reads, hashed as read, tensors in place.

Each shard is read into one buffer by several worker threads (a task is one record chunk, so
each read is large and sequential and each chunk is hashed by the thread that read it). Pages
not in the page cache are read with ``O_DIRECT`` straight into the destination, cached ones are
copied from the cache (``Source``). On CPU the buffer is the tensors' memory: one
anonymous private map per shard (page-aligned for ``O_DIRECT``, no zero-fill: its pages are
first touched by the read) and every tensor is ``torch.frombuffer`` over its byte range, no
second copy. On CUDA each worker reads into two pinned host buffers in turn and copies each to
the shard's device buffer with ``non_blocking`` on its own stream while it reads the next
(double buffering); tensors are views of the device buffer. Imported by ``serving.model`` only.
"""

from __future__ import annotations

import ctypes
import logging
import math
import mmap
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from serving import weights
from serving.integrity import IntegrityError, TensorEntry
from serving.reads import ALIGN, Source

log = logging.getLogger(__name__)

BLOCK_BYTES = 16 * 2**20  # one preadv; also the size of each pinned staging buffer on CUDA
WORKERS = 4
TORCH_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn",
    "I16": "int16", "U16": "uint16", "F16": "float16", "BF16": "bfloat16", "I32": "int32",
    "U32": "uint32", "F32": "float32", "I64": "int64", "U64": "uint64", "F64": "float64",
}  # fmt: skip


def load_state_dict(
    model_dir: Path,
    *,
    device: str = "cpu",
    check: bool = True,
    workers: int = WORKERS,
    block_bytes: int = BLOCK_BYTES,
) -> dict[str, torch.Tensor]:
    """Every tensor of every shard in ``model_dir`` on ``device``, checked in the same pass.

    ``check``: compare each chunk with the node cache record when the directory has one (a
    directory outside a cache loads with header checks only). Raises ``IntegrityError`` naming
    the file (and the chunk's byte range) on any damage.
    """
    start = time.perf_counter()
    plan = weights.plan(model_dir, check=check)
    target = torch.device(device)
    if target.type == "cuda":
        buffers: list[torch.Tensor | mmap.mmap] = [
            torch.empty(s.header.size, dtype=torch.uint8, device=target) for s in plan.shards
        ]
    else:
        buffers = [_host_buffer(s.header.size) for s in plan.shards]
    _read_all(plan, buffers, target, workers, block_bytes, meanwhile=lambda: weights.check_other_files(plan))
    tensors: dict[str, torch.Tensor] = {}
    for shard, buf in zip(plan.shards, buffers, strict=True):
        for entry in shard.header.tensors:
            tensors[entry.name] = _tensor(buf, shard.header.data_start, entry, shard.header.path)
    seconds = time.perf_counter() - start
    log.info(
        "%s: %d tensors, %.0f MB on %s in %.3fs (%.0f MB/s)%s",
        model_dir,
        len(tensors),
        plan.total_bytes / 1e6,
        target,
        seconds,
        plan.total_bytes / 1e6 / max(seconds, 1e-9),
        ", digests match" if plan.record is not None else "",
    )
    return tensors


def _read_all(
    plan: weights.Plan,
    buffers: list[torch.Tensor | mmap.mmap],
    target: torch.device,
    workers: int,
    block: int,
    *,
    meanwhile: Callable[[], None],
) -> None:
    """Run the segments on ``workers`` threads and ``meanwhile`` on this one (the small files'
    check, overlapped with the weights' reads); the first failure stops the others and is raised."""
    segs = weights.segments(plan)
    sources: list[Source] = []
    try:
        sources.extend(Source(s.header.path) for s in plan.shards)
        run = _Run(plan, buffers, sources, segs, block)
        work = run.cuda_worker if target.type == "cuda" else run.cpu_worker
        n = max(1, min(workers, len(segs)))
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="serving-load") as pool:
            futures = [pool.submit(run.guarded, work) for _ in range(n)]
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


class _Run:
    """The shared state of one load: the segments left, open files, buffers, the stop flag."""

    def __init__(
        self,
        plan: weights.Plan,
        buffers: list[torch.Tensor | mmap.mmap],
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

    def cpu_worker(self) -> None:
        """Read straight into the shard's buffer: that memory becomes the tensors."""
        views = [memoryview(b) for b in self.buffers if isinstance(b, mmap.mmap)]
        while (seg := self.next()) is not None:
            self.read(seg, _slicer(views[seg.shard]), _nothing)

    def cuda_worker(self) -> None:
        """Read into pinned buffer A, copy it to the device asynchronously while reading into B."""
        stream = torch.cuda.Stream()
        staging = [torch.empty(self.block, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        views = [_writable(t) for t in staging]
        pending: list[torch.cuda.Event | None] = [None, None]
        turn = 0

        def sink(_offset: int, _n: int) -> memoryview:
            event = pending[turn]
            if event is not None:
                event.synchronize()  # the copy out of this buffer has finished: reuse it
            return views[turn]

        def copier(dst: torch.Tensor) -> weights.Filled:
            def filled(offset: int, n: int, _view: memoryview) -> None:
                nonlocal turn
                with torch.cuda.stream(stream):
                    dst[offset : offset + n].copy_(staging[turn][:n], non_blocking=True)
                    event = torch.cuda.Event()
                    event.record(stream)
                pending[turn] = event
                turn ^= 1

            return filled

        try:
            while (seg := self.next()) is not None:
                dst = self.buffers[seg.shard]
                assert isinstance(dst, torch.Tensor)
                self.read(seg, sink, copier(dst))
        finally:
            stream.synchronize()  # no copy may outlive its pinned buffer


def _host_buffer(size: int) -> mmap.mmap:
    """Private anonymous memory for one shard, rounded up to whole pages (a direct read of the
    file's tail fills its last page). Unlike ``bytearray`` nothing is zeroed up front."""
    return mmap.mmap(-1, max(1, -(-size // ALIGN) * ALIGN), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _slicer(view: memoryview) -> weights.Sink:
    def sink(offset: int, _n: int) -> memoryview:
        return view[offset:]  # to the buffer's end: room for a direct read's rounded-up tail

    return sink


def _nothing(_offset: int, _n: int, _view: memoryview) -> None:
    return None


def _writable(t: torch.Tensor) -> memoryview:
    """A writable byte view of a (pinned) host tensor's memory, for ``preadv``."""
    return memoryview((ctypes.c_ubyte * t.numel()).from_address(t.data_ptr())).cast("B")


def _tensor(buf: torch.Tensor | mmap.mmap, data_start: int, e: TensorEntry, path: Path) -> torch.Tensor:
    """The tensor over its bytes in ``buf`` (no copy), or an aligned copy when its offset is odd."""
    name = TORCH_DTYPES.get(e.dtype)
    dtype = getattr(torch, name, None) if name else None
    if not isinstance(dtype, torch.dtype):
        raise IntegrityError(f"{path}: tensor {e.name!r} has dtype {e.dtype}, which this torch cannot hold")
    numel = math.prod(e.shape)
    offset = data_start + e.begin
    itemsize = torch.empty((), dtype=dtype).element_size()
    if isinstance(buf, torch.Tensor):  # CUDA: a view of the shard's device buffer
        raw = buf[offset : data_start + e.end]
        if offset % itemsize:
            raw = raw.clone()
        return raw.view(dtype).reshape(e.shape)
    if numel == 0:
        return torch.empty(e.shape, dtype=dtype)
    t = torch.frombuffer(buf, dtype=dtype, count=numel, offset=offset)
    if offset % itemsize:  # safetensors does not promise alignment; every writer we know aligns
        t = t.clone()
    return t.reshape(e.shape)
