"""Start-up integrity checks on synthetic safetensors files (no torch involved)."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from serving.integrity import IntegrityError, check_dir, check_safetensors, weight_files
from tests.fixtures.models import synthetic_model, write_safetensors


def _rewrite_header(path: Path, change: Callable[[dict[str, object]], None]) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    change(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _pad(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0" * 8)


def _tiny(path: Path) -> None:
    path.write_bytes(b"\x01\x02")


def _huge_header_length(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**40) + raw[8:])


def _garbage_header(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[8:24] = b"\xff\x00garbage\xfe\x01xyzw"
    path.write_bytes(bytes(raw))


def _not_an_object(path: Path) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    path.write_bytes(raw[:8] + b"[1]".ljust(n) + raw[8 + n :])


def _wrong_dtype(path: Path) -> None:
    _rewrite_header(path, lambda h: h["weight"].update(dtype="Q7"))  # type: ignore[attr-defined]


def _shape_mismatch(path: Path) -> None:
    _rewrite_header(path, lambda h: h["weight"].update(dtype="F32"))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        pytest.param(_truncate, "file holds", id="truncated"),
        pytest.param(_pad, "file holds", id="padded"),
        pytest.param(_tiny, "too short", id="two bytes"),
        pytest.param(_huge_header_length, "does not fit", id="header length beyond the file"),
        pytest.param(_garbage_header, "not valid JSON", id="garbled header"),
        pytest.param(_not_an_object, "not a JSON object", id="header not an object"),
        pytest.param(_wrong_dtype, "malformed header entry", id="unknown dtype"),
        pytest.param(_shape_mismatch, "do not fit its shape", id="dtype and shape disagree"),
    ],
)
def test_damaged_safetensors_are_refused_naming_the_file(
    tmp_path: Path, damage: Callable[[Path], None], fragment: str
) -> None:
    path = write_safetensors(tmp_path / "w.safetensors", 4096, seed=1)
    assert check_safetensors(path) == 1
    damage(path)
    with pytest.raises(IntegrityError) as info:
        check_safetensors(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_sharded_model_passes(tmp_path: Path) -> None:
    model = synthetic_model(tmp_path / "m", shards=3, shard_bytes=64 * 1024)
    assert len(weight_files(model)) == 3
    assert check_dir(model) == 3


@pytest.mark.parametrize(
    ("breakage", "fragment"),
    [
        pytest.param("no dir", "does not exist", id="missing directory"),
        pytest.param("no config", "config.json is missing", id="no config.json"),
        pytest.param("no weights", "no *.safetensors", id="no safetensors"),
        pytest.param("lost shard", "missing", id="shard named in the index is gone"),
        pytest.param("bad index", "unreadable shard index", id="index not JSON"),
    ],
)
def test_broken_layouts_are_refused(tmp_path: Path, breakage: str, fragment: str) -> None:
    model = synthetic_model(tmp_path / "m", shards=2, shard_bytes=64 * 1024)
    shards = sorted(model.glob("*.safetensors"))
    if breakage == "no dir":
        model = tmp_path / "nowhere"
    elif breakage == "no config":
        (model / "config.json").unlink()
    elif breakage == "no weights":
        for shard in shards:
            shard.unlink()
    elif breakage == "lost shard":
        shards[1].unlink()
    elif breakage == "bad index":
        (model / "model.safetensors.index.json").write_text("{nope")
    with pytest.raises(IntegrityError) as info:
        check_dir(model)
    assert fragment in str(info.value)
