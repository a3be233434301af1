"""The one record check (``locality.recordcheck``) and the pure digest helpers it uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from locality.digests import chunk_span, merged, mismatch_lines
from locality.recordcheck import verify_files, verify_model_dir
from locality.records import record_at
from tests.fixtures.cached import commit_copy

CHUNK = 8


@pytest.mark.parametrize(
    ("index", "size", "span"),
    [
        pytest.param(0, 20, (0, 8), id="first"),
        pytest.param(2, 20, (16, 4), id="short last"),
        pytest.param(1, 16, (8, 8), id="exact last"),
    ],
)
def test_chunk_span(index: int, size: int, span: tuple[int, int]) -> None:
    assert chunk_span(index, size, CHUNK) == span


@pytest.mark.parametrize(
    ("ranges", "runs"),
    [
        pytest.param([], [], id="none"),
        pytest.param([(0, 8), (8, 16), (32, 40)], [(0, 16), (32, 40)], id="adjacent joined"),
        pytest.param([(8, 16), (24, 32)], [(8, 16), (24, 32)], id="gaps kept"),
    ],
)
def test_merged(ranges: list[tuple[int, int]], runs: list[tuple[int, int]]) -> None:
    assert merged(ranges) == runs


def test_mismatch_lines() -> None:
    lines = mismatch_lines("w.bin", [(0, 8), (8, 12)])
    assert lines == ["w.bin: xxh3_128 mismatch in bytes 0..12 (end exclusive)"]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(bytes(range(40)))
    (src / "config.json").write_text("{}")
    return commit_copy(src, tmp_path / "cache", "s3://models/org/m", CHUNK)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "problems"),
    [
        pytest.param("none", [], id="intact"),
        pytest.param("flip", ["w.bin: xxh3_128 mismatch in bytes 8..16 (end exclusive)"], id="one chunk"),
        pytest.param("truncate", ["w.bin: size 39 != 40"], id="truncated"),
        pytest.param("lose", ["config.json: missing (No such file or directory)"], id="file removed"),
        pytest.param("add", ["stray.txt: not part of the model"], id="file added"),
    ],
)
def test_verify_files(model_dir: Path, damage: str, problems: list[str]) -> None:
    if damage == "flip":
        flip(model_dir / "w.bin", 9)
    elif damage == "truncate":
        (model_dir / "w.bin").write_bytes(bytes(range(39)))
    elif damage == "lose":
        (model_dir / "config.json").unlink()
    elif damage == "add":
        (model_dir / "stray.txt").write_text("x")
    record = record_at(model_dir)
    assert record is not None
    assert verify_files(model_dir, record) == problems
    assert verify_model_dir(model_dir) == problems


def test_skipped_files_are_left_to_the_caller(model_dir: Path) -> None:
    flip(model_dir / "w.bin", 0)
    record = record_at(model_dir)
    assert record is not None
    assert verify_files(model_dir, record, skip={"w.bin"}) == []


def test_a_directory_outside_a_cache_has_no_record(tmp_path: Path) -> None:
    assert record_at(tmp_path) is None and verify_model_dir(tmp_path) is None
