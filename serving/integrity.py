"""Start-up integrity of a model directory: safetensors headers and the node cache's record.

Everything here runs before torch sees a byte, so a damaged file fails with a one-line reason
that names it instead of a loader traceback (or, worse, a model that loads garbage silently).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locality.recordcheck import verify_model_dir

MAX_HEADER = 100 * 2**20  # the safetensors reference implementation refuses larger headers
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


class IntegrityError(Exception):
    """A model file that must not be loaded; the message names the file and the reason."""


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor of a safetensors header; ``begin``/``end`` count from the start of the data."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True, slots=True)
class Header:
    """A validated safetensors header: the file's size, where its data start, its tensors."""

    path: Path
    size: int
    data_start: int  # 8 + header length
    tensors: tuple[TensorEntry, ...]


def weight_files(model_dir: Path) -> list[Path]:
    """The ``*.safetensors`` files of a Hugging Face layout directory, checked against its index."""
    if not model_dir.is_dir():
        raise IntegrityError(f"model directory {model_dir} does not exist or is not a directory")
    if not (model_dir / "config.json").is_file():
        raise IntegrityError(f"{model_dir}/config.json is missing: not a Hugging Face model directory")
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise IntegrityError(f"no *.safetensors weights in {model_dir} (only safetensors are loaded)")
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"{index}: unreadable shard index ({exc})") from exc
        missing = sorted(s for s in shards if not (model_dir / s).is_file())
        if missing:
            raise IntegrityError(f"{model_dir}: shard(s) named in the index are missing: {missing}")
    return files


def check_safetensors(path: Path) -> int:
    """Validate a safetensors header against the file size; return the number of tensors."""
    return len(read_header(path).tensors)


def read_header(path: Path) -> Header:
    """Read and validate a safetensors header against the file size (reads only the header).

    Layout: ``u64 little-endian N``, ``N`` bytes of JSON ``{name: {dtype, shape, data_offsets}}``,
    then the data. Each tensor needs ``end - begin = prod(shape) * bytes(dtype)`` and the largest
    ``end`` must equal ``size - 8 - N`` (a truncated or padded file fails here).
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise IntegrityError(f"{path}: {size} bytes is too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER, size - 8):
            raise IntegrityError(f"{path}: header length {n} does not fit a file of {size} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path}: safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise IntegrityError(f"{path}: safetensors header is not a JSON object")
    data_len = size - 8 - n
    entries = [_entry(path, k, v) for k, v in header.items() if k != "__metadata__"]
    declared = max((entry.end for entry, _ in entries), default=0)
    if declared != data_len:
        raise IntegrityError(
            f"{path}: header describes {declared} data bytes but the file holds {data_len} (truncated?)"
        )
    for e, nbytes in entries:
        if not 0 <= e.begin <= e.end or e.end - e.begin != nbytes:
            raise IntegrityError(f"{path}: tensor {e.name!r} offsets {e.begin}..{e.end} do not fit its shape")
    return Header(path, size, 8 + n, tuple(entry for entry, _ in entries))


def _entry(path: Path, name: str, info: Any) -> tuple[TensorEntry, int]:
    """One header entry and the bytes its dtype and shape need."""
    try:
        begin, end = (int(x) for x in info["data_offsets"])
        shape = tuple(int(d) for d in info["shape"])
        nbytes = DTYPE_BYTES[info["dtype"]] * math.prod(shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{path}: tensor {name!r} has a malformed header entry") from exc
    return TensorEntry(name, str(info["dtype"]), shape, begin, end), nbytes


def check_dir(model_dir: Path) -> int:
    """Check every weight file's header; return the total number of tensors."""
    total = 0
    for path in weight_files(model_dir):
        try:
            total += check_safetensors(path)
        except OSError as exc:
            raise IntegrityError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return total


def verify_in_cache(model_dir: Path) -> bool:
    """Re-hash ``model_dir`` against the node cache record; ``False`` when it is not in a cache.

    Flipped data bytes load silently, so the record's digests are the only witness for them.
    """
    try:
        problems = verify_model_dir(model_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # e.g. a damaged record
        raise IntegrityError(f"cannot verify {model_dir} against the node cache record: {exc}") from exc
    if problems is None:
        return False
    if problems:
        raise record_mismatch(model_dir, problems)
    return True


def record_mismatch(model_dir: Path, problems: list[str]) -> IntegrityError:
    """The error for a directory that differs from its record: the first three problems shown."""
    shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
    return IntegrityError(f"{model_dir} does not match the node cache record: {shown}")
