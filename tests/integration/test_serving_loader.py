"""The one-pass loader on real files: the same tensors as safetensors, damage named by file and chunk."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from serving.integrity import IntegrityError, read_header
from serving.loader import load_state_dict
from serving.reads import Source
from tests.fixtures.cached import commit_copy
from tests.fixtures.models import synthetic_model

CHUNK = 64 * 1024
URI = "s3://models/tests/mixed"


def mixed_model(root: Path) -> Path:
    """Two shards written by safetensors itself, with several dtypes, odd shapes and a scalar."""
    g = torch.Generator().manual_seed(7)
    shards = [
        {
            "a.f32": torch.randn(300, 257, generator=g),
            "a.bf16": torch.randn(1000, generator=g).to(torch.bfloat16),
            "a.i64": torch.arange(12345, dtype=torch.int64).reshape(5, 2469),
            "a.scalar": torch.tensor(3.5),
            "a.empty": torch.zeros(0, 4),
        },
        {
            "b.f16": torch.randn(64, 1031, generator=g).to(torch.float16),
            "b.u8": torch.randint(0, 255, (70001,), dtype=torch.uint8, generator=g),
            "b.bool": torch.rand(999, generator=g) > 0.5,
        },
    ]
    root.mkdir(parents=True)
    (root / "config.json").write_text("{}")
    for i, tensors in enumerate(shards):
        save_file(tensors, str(root / f"model-{i + 1:05d}-of-00002.safetensors"))
    return root


def reference(model_dir: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


def flip(path: Path, at: int) -> None:
    with path.open("r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))


def flip_last_byte(path: Path) -> None:
    flip(path, path.stat().st_size - 1)


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


@pytest.mark.parametrize("mapped", [pytest.param(True, id="mapped"), pytest.param(False, id="copied")])
@pytest.mark.parametrize(
    ("workers", "block"),
    [
        pytest.param(1, 1 << 20, id="one worker"),
        pytest.param(3, 4096, id="three workers, blocks smaller than a chunk"),
    ],
)
def test_cached_model_loads_the_same_tensors_as_safetensors(
    tmp_path: Path, workers: int, block: int, mapped: bool
) -> None:
    model_dir = commit_copy(mixed_model(tmp_path / "src"), tmp_path / "cache", URI, CHUNK)
    got = load_state_dict(model_dir, workers=workers, block_bytes=block, mapped=mapped)
    assert_same(got, reference(model_dir))


def test_minilm_from_the_cache_equals_load_file(minilm: Path, tmp_path: Path) -> None:
    model_dir = commit_copy(minilm, tmp_path / "cache", "s3://models/sentence-transformers/all-MiniLM-L6-v2")
    assert_same(load_state_dict(model_dir), load_file(str(model_dir / "model.safetensors")))


def test_tensors_outlive_the_dict_and_share_the_read_buffer(tmp_path: Path) -> None:
    model_dir = mixed_model(tmp_path / "m")
    got = load_state_dict(model_dir)
    a, b = got["a.f32"], got["a.i64"]
    del got
    assert torch.equal(a, reference(model_dir)["a.f32"]) and b.sum() == sum(range(12345))
    offsets = {e.name: e.begin for e in read_header(model_dir / "model-00001-of-00002.safetensors").tensors}
    assert b.data_ptr() - a.data_ptr() == offsets["a.i64"] - offsets["a.f32"]  # one buffer, no copies


def test_directory_outside_a_cache_loads_without_digests(tmp_path: Path) -> None:
    model_dir = mixed_model(tmp_path / "plain")
    assert_same(load_state_dict(model_dir), reference(model_dir))


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_pages(path: Path) -> bool:
    """Whether any page of the file is in the page cache (``mincore``: asking reads nothing)."""
    source = Source(path)
    try:
        return any(source.cached(at, 1) for at in range(0, source.size, 4096))
    finally:
        source.close()


@pytest.mark.parametrize(
    ("warm_bytes", "workers", "block"),
    [
        pytest.param(0, 4, 1 << 20, id="all pages cold"),
        pytest.param(0, 3, 8192, id="all cold, small blocks"),
        pytest.param(100_003, 2, 8192, id="first 100 kB cached, the rest cold"),
    ],
)
def test_cold_pages_load_the_same_tensors(tmp_path: Path, warm_bytes: int, workers: int, block: int) -> None:
    """Cold pages are read around the page cache (O_DIRECT) into private copies, tails and all."""
    model_dir = commit_copy(mixed_model(tmp_path / "src"), tmp_path / "cache", URI, CHUNK)
    want = {k: t.clone() for k, t in reference(model_dir).items()}  # no file map left to pin pages
    shards = sorted(model_dir.glob("*.safetensors"))
    for path in shards:
        evict(path)
        with path.open("rb") as f:
            f.read(warm_bytes)
    evictable = not cached_pages(shards[0])
    assert_same(load_state_dict(model_dir, workers=workers, block_bytes=block, mapped=False), want)
    # Where pages can be dropped (not tmpfs), the cold read bypassed the cache: past the first
    # chunk, since reading the header reads ahead a little. Only with blocks larger than that
    # readahead: a block it covers whole is copied from the cache, and that read reads ahead too.
    if evictable and not warm_bytes and block > CHUNK:
        for path in shards:
            source = Source(path)
            try:
                assert not any(source.cached(at, 1) for at in range(CHUNK, source.size, 4096)), path
            finally:
                source.close()


@pytest.mark.parametrize("mapped", [pytest.param(True, id="mapped"), pytest.param(False, id="copied")])
@pytest.mark.parametrize(
    ("shard", "offset"),
    [
        pytest.param(0, 40_000, id="first shard, first chunk"),
        pytest.param(0, 3 * CHUNK + 17, id="first shard, fourth chunk"),
        pytest.param(1, -1, id="second shard, last byte"),
    ],
)
def test_flipped_byte_fails_naming_file_and_chunk(
    tmp_path: Path, shard: int, offset: int, mapped: bool
) -> None:
    model_dir = commit_copy(mixed_model(tmp_path / "src"), tmp_path / "cache", URI, CHUNK)
    path = sorted(model_dir.glob("*.safetensors"))[shard]
    at = offset % path.stat().st_size
    flip(path, at)
    with pytest.raises(IntegrityError) as info:
        load_state_dict(model_dir, workers=2, block_bytes=8192, mapped=mapped)
    chunk = at // CHUNK
    end = min((chunk + 1) * CHUNK, path.stat().st_size)
    assert str(info.value) == (
        f"{path}: chunk {chunk} (bytes {chunk * CHUNK}..{end}) does not match the node cache record"
    )


def test_flipped_byte_loads_when_the_check_is_off(tmp_path: Path) -> None:
    model_dir = commit_copy(mixed_model(tmp_path / "src"), tmp_path / "cache", URI, CHUNK)
    path = sorted(model_dir.glob("*.safetensors"))[1]
    flip_last_byte(path)
    assert_same(load_state_dict(model_dir, check=False), reference(model_dir))


@pytest.mark.parametrize("cached", [pytest.param(True, id="in a cache"), pytest.param(False, id="plain dir")])
def test_truncated_file_fails_naming_it(tmp_path: Path, cached: bool) -> None:
    src = synthetic_model(tmp_path / "src", shards=2, shard_bytes=200_000)
    model_dir = commit_copy(src, tmp_path / "cache", URI, CHUNK) if cached else src
    path = sorted(model_dir.glob("*.safetensors"))[1]
    os.truncate(path, path.stat().st_size - 10)
    with pytest.raises(IntegrityError) as info:
        load_state_dict(model_dir)
    assert str(path) in str(info.value) and "truncated?" in str(info.value)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        pytest.param("config", "config.json: xxh3_128 mismatch in bytes 0..", id="config.json edited"),
        pytest.param("extra", "stray.bin: not part of the model", id="file the record does not list"),
        pytest.param("lost", "tokenizer.json: missing", id="file of the record removed"),
    ],
)
def test_other_files_are_checked_against_the_record(tmp_path: Path, change: str, fragment: str) -> None:
    src = mixed_model(tmp_path / "src")
    (src / "tokenizer.json").write_text('{"v": 1}')
    model_dir = commit_copy(src, tmp_path / "cache", URI, CHUNK)
    if change == "config":
        (model_dir / "config.json").write_text("[]")
    elif change == "extra":
        (model_dir / "stray.bin").write_bytes(b"x")
    else:
        (model_dir / "tokenizer.json").unlink()
    with pytest.raises(IntegrityError) as info:
        load_state_dict(model_dir)
    assert "does not match the node cache record" in str(info.value) and fragment in str(info.value)


def test_weight_file_unknown_to_the_record_fails(tmp_path: Path) -> None:
    model_dir = commit_copy(mixed_model(tmp_path / "src"), tmp_path / "cache", URI, CHUNK)
    shutil.copy(model_dir / "model-00001-of-00002.safetensors", model_dir / "extra.safetensors")
    with pytest.raises(IntegrityError, match=r"extra\.safetensors: not part of the node cache record"):
        load_state_dict(model_dir)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pipeline_matches_cpu(tmp_path: Path) -> None:
    model_dir = commit_copy(mixed_model(tmp_path / "src"), tmp_path / "cache", URI, CHUNK)
    got = load_state_dict(model_dir, device="cuda", block_bytes=8192)
    assert all(t.device.type == "cuda" for t in got.values())
    assert_same({k: t.cpu() for k, t in got.items()}, reference(model_dir))


@pytest.mark.parametrize(
    ("misalign", "direct_ok"),
    [
        pytest.param(1, True, id="destination not page-aligned"),
        pytest.param(0, False, id="file system refused direct reads"),
        pytest.param(0, True, id="direct, tail rounded up into the view"),
    ],
)
def test_cold_range_reads_whole_direct_or_buffered(tmp_path: Path, misalign: int, direct_ok: bool) -> None:
    path = tmp_path / "blob"
    data = os.urandom(3 * 4096 + 123)
    path.write_bytes(data)
    evict(path)
    source = Source(path)
    try:
        source.direct_ok = direct_ok
        buf = memoryview(bytearray(len(data) + 8192))
        start = -ctypes.addressof(ctypes.c_char.from_buffer(buf)) % 4096 + misalign
        view = buf[start : start + len(data) + 4096]
        source.fill(view, len(data), 0)  # ends at the file's unaligned end
        assert bytes(view[: len(data)]) == data
    finally:
        source.close()


def test_read_error_in_a_worker_is_an_integrity_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk error (EIO) on a copying worker fails the load with a one-line reason, not an OSError."""
    model_dir = commit_copy(mixed_model(tmp_path / "src"), tmp_path / "cache", URI, CHUNK)

    def failing(self: Source, view: memoryview, n: int, offset: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(Source, "fill", failing)
    with pytest.raises(IntegrityError, match=r"cannot read \(Input/output error\)"):
        load_state_dict(model_dir, mapped=False)
