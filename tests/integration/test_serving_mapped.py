"""The zero-copy CPU load of a committed model: tensors over file maps, every chunk checked first."""

from __future__ import annotations

import ctypes
import errno
import gc
from pathlib import Path

import pytest
import torch

from serving import hostload, loading, mapped, model
from serving.integrity import IntegrityError
from serving.loader import load_state_dict, tensors_of
from tests.fixtures.cached import commit_copy
from tests.integration.test_serving_loader import CHUNK, URI, assert_same, flip, mixed_model, reference

MINILM_URI = "s3://models/sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["A man is playing a guitar on stage.", "Someone performs music with a guitar.", "Rates rose again."]

pytestmark = pytest.mark.skipif(not mapped.supported(), reason="kernel < 5.14: no MADV_POPULATE_READ")


def mapped_files() -> set[str]:
    """Paths of the files this process has mapped (``/proc/self/maps``)."""
    lines = Path("/proc/self/maps").read_text().splitlines()
    return {line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6}


def map_range(path: Path) -> list[tuple[int, int]]:
    """The address ranges at which ``path`` is mapped into this process."""
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            out.append((lo, hi))
    return out


@pytest.fixture
def cached(tmp_path: Path) -> Path:
    return commit_copy(mixed_model(tmp_path / "src"), tmp_path / "cache", URI, CHUNK)


def test_tensors_are_views_of_the_shard_maps(cached: Path) -> None:
    host = hostload.read_host(cached)
    assert host.mapped
    got = tensors_of(host)
    assert_same(got, reference(cached))
    for shard in host.plan.shards:
        (lo, hi), *_ = map_range(shard.header.path) or [(0, 0)]
        assert hi > lo, f"{shard.header.path} is not mapped"
        for entry in shard.header.tensors:
            t = got[entry.name]
            if t.numel():  # an empty tensor owns no bytes
                assert t.data_ptr() == lo + shard.header.data_start + entry.begin, entry.name


def test_the_map_lives_as_long_as_a_tensor_over_it(cached: Path) -> None:
    got = load_state_dict(cached)
    keep = got["b.u8"].clone(), got["b.u8"]
    shard = str(sorted(cached.glob("*.safetensors"))[1])
    del got
    gc.collect()
    assert shard in mapped_files() and torch.equal(keep[0], keep[1])
    del keep
    gc.collect()
    assert shard not in mapped_files()


def test_a_write_to_a_tensor_copies_the_page_and_leaves_the_file(cached: Path) -> None:
    want = reference(cached)
    got = load_state_dict(cached)
    got["a.f32"].add_(1.0)  # copy on write: no crash, the file unchanged
    assert torch.equal(got["a.f32"], want["a.f32"] + 1.0)
    assert_same(load_state_dict(cached), reference(cached))


@pytest.mark.parametrize(
    ("shard", "offset"),
    [pytest.param(0, 40_000, id="first shard"), pytest.param(1, -1, id="second shard, last byte")],
)
def test_a_flipped_byte_is_refused_before_any_tensor(
    cached: Path, shard: int, offset: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[object] = []
    monkeypatch.setattr("serving.loader._tensor", lambda *a: built.append(a))
    path = sorted(cached.glob("*.safetensors"))[shard]
    flip(path, offset % path.stat().st_size)
    with pytest.raises(IntegrityError, match=r"does not match the node cache record"):
        load_state_dict(cached)
    assert built == []


@pytest.mark.parametrize(
    ("err", "shown"),
    [
        pytest.param(errno.EFAULT, "Input/output error", id="EFAULT: a SIGBUS avoided"),
        pytest.param(errno.EIO, "Input/output error", id="EIO"),
        pytest.param(errno.ENOMEM, "Cannot allocate memory", id="ENOMEM"),
    ],
)
def test_a_read_error_while_populating_is_one_line(
    cached: Path, err: int, shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(_addr: int, _length: int) -> int:
        ctypes.set_errno(err)
        return -1

    monkeypatch.setattr(mapped, "_populate", failing)
    with pytest.raises(IntegrityError, match=rf"\.safetensors: cannot read \({shown}\)"):
        load_state_dict(cached)


@pytest.mark.parametrize(
    ("where", "check", "supported"),
    [
        pytest.param("plain", True, True, id="outside a cache: its owner may rewrite it"),
        pytest.param("cache", False, True, id="check off"),
        pytest.param("cache", True, False, id="kernel without MADV_POPULATE_READ"),
    ],
)
def test_private_copy_where_the_map_is_not_safe(
    tmp_path: Path, where: str, check: bool, supported: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = mixed_model(tmp_path / "src")
    model_dir = src if where == "plain" else commit_copy(src, tmp_path / "cache", URI, CHUNK)
    monkeypatch.setattr(mapped, "supported", lambda: supported)
    host = hostload.read_host(model_dir, check=check)
    assert not host.mapped
    assert_same(tensors_of(host), reference(model_dir))


def test_mapped_model_embeds_exactly_like_the_copied_one(minilm: Path, tmp_path: Path) -> None:
    model_dir = commit_copy(minilm, tmp_path / "cache", MINILM_URI, 16 * 2**20)
    found = model.parts(model_dir)
    copied = model.load_host(model_dir, hostload.read_host(model_dir, mapped=False), found)
    served = loading.load(model_dir, device="cpu", threads=None, check=True)  # the server's path
    ptrs = {p.data_ptr() for p in served._model.parameters()}  # type: ignore[attr-defined]
    ranges = map_range(model_dir / "model.safetensors")
    assert ranges and all(any(lo <= ptr < hi for lo, hi in ranges) for ptr in ptrs)
    assert served.embed(TEXTS) == copied.embed(TEXTS)
