"""Tensors over a load's buffers: host memory on CPU, a pinned double-buffered pass on CUDA.

On CPU the buffers are ``serving.hostload``'s (checked without torch: maps of a committed
model's files, else private copies) and every tensor is ``torch.frombuffer`` over its byte
range, no second copy. On CUDA each worker reads into two
pinned host buffers in turn and copies each to the shard's device buffer with ``non_blocking``
on its own stream while it reads the next (double buffering); tensors are views of the device
buffer. Imported by ``serving.model`` only.
"""

from __future__ import annotations

import ctypes
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from serving import hostload, weights
from serving.hostload import BLOCK_BYTES, WORKERS, HostBuffer, HostWeights, Run
from serving.integrity import IntegrityError, TensorEntry

log = logging.getLogger(__name__)

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
    mapped: bool = True,
) -> dict[str, torch.Tensor]:
    """Every tensor of every shard in ``model_dir`` on ``device``, checked in the same pass.

    ``check``: compare each chunk with the node cache record when the directory has one (a
    directory outside a cache loads with header checks only). Raises ``IntegrityError`` naming
    the file (and the chunk's byte range) on any damage. ``mapped`` (CPU): tensors over maps of
    a committed model's files (``serving.mapped``) rather than over private copies.
    """
    target = torch.device(device)
    if target.type != "cuda":
        host = hostload.read_host(
            model_dir, check=check, workers=workers, block_bytes=block_bytes, mapped=mapped
        )
        return tensors_of(host)
    start = time.perf_counter()
    plan = weights.plan(model_dir, check=check)
    buffers = [torch.empty(s.header.size, dtype=torch.uint8, device=target) for s in plan.shards]
    meanwhile = lambda: weights.check_other_files(plan)  # noqa: E731
    hostload.read_all(plan, buffers, _cuda_worker, workers, block_bytes, meanwhile=meanwhile)
    return _tensors(plan, buffers, str(target), time.perf_counter() - start)


def tensors_of(host: HostWeights) -> dict[str, torch.Tensor]:
    """The tensors of a host read, each a view of its shard's buffer (no copy)."""
    return _tensors(host.plan, host.buffers, "cpu (mapped)" if host.mapped else "cpu", host.seconds)


def _tensors(
    plan: weights.Plan, buffers: Sequence[torch.Tensor | HostBuffer], where: str, seconds: float
) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard, buf in zip(plan.shards, buffers, strict=True):
        for entry in shard.header.tensors:
            tensors[entry.name] = _tensor(buf, shard.header.data_start, entry, shard.header.path)
    log.info(
        "%s: %d tensors, %.0f MB on %s, read in %.3fs (%.0f MB/s)%s",
        plan.model_dir,
        len(tensors),
        plan.total_bytes / 1e6,
        where,
        seconds,
        plan.total_bytes / 1e6 / max(seconds, 1e-9),
        ", digests match" if plan.record is not None else "",
    )
    return tensors


def _cuda_worker(run: Run) -> None:
    """Read into pinned buffer A, copy it to the device asynchronously while reading into B."""
    stream = torch.cuda.Stream()
    staging = [torch.empty(run.block, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
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
        while (seg := run.next()) is not None:
            dst = run.buffers[seg.shard]
            assert isinstance(dst, torch.Tensor)
            run.read(seg, sink, copier(dst))
    finally:
        stream.synchronize()  # no copy may outlive its pinned buffer


def _writable(t: torch.Tensor) -> memoryview:
    """A writable byte view of a (pinned) host tensor's memory, for ``preadv``."""
    return memoryview((ctypes.c_ubyte * t.numel()).from_address(t.data_ptr())).cast("B")


def _tensor(buf: torch.Tensor | HostBuffer, data_start: int, e: TensorEntry, path: Path) -> torch.Tensor:
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
