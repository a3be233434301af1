"""The Hugging Face source against a Hub-compatible fixture (tests/fixtures/hfhub.py): listing via
huggingface_hub, bytes through our ranged path via resolve redirects, globs, checksums, gating."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import Settings
from agent.fetch.cache import Cache, FetchFailed, VerificationFailed
from locality.identity import model_ref
from tests.fixtures.hfhub import Hub, HubRepo, git_blob_id, run_hub

MiB = 2**20
WEIGHTS = bytes(range(256)) * (3 * MiB // 256) + b"tail"
FILES = {
    "config.json": b'{"model_type": "bert"}',
    "model.safetensors": WEIGHTS,
    "pytorch_model.bin": b"p" * 5000,
    "tokenizer.json": b'{"v": 1}',
}
LFS = frozenset({"model.safetensors", "pytorch_model.bin"})


@pytest.fixture()
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Hub]:
    repos = {
        "org/open": HubRepo(FILES, lfs=LFS),
        "org/gated": HubRepo({"config.json": b"{}"}, gated=True),
        "org/liar": HubRepo(FILES, lfs=LFS, wrong_sha256=frozenset({"model.safetensors"})),
    }
    with run_hub(repos) as running:
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield running


def make_cache(root: Path, hub: Hub) -> Cache:
    settings = Settings(cache_dir=root, chunk_bytes=MiB, concurrency=2, attempts=4, hf_endpoint=hub.url)
    return Cache(settings.validate())


async def test_include_globs_fetch_only_those_files_checked_by_the_hub(hub: Hub, tmp_path: Path) -> None:
    cache = make_cache(tmp_path / "cache", hub)
    ref = model_ref("hf://org/open?include=*.safetensors,config.json")
    record = await cache.fetch(ref)
    assert sorted(f.path for f in record.files) == ["config.json", "model.safetensors"]
    assert record.revision == hub.repos["org/open"].sha  # the commit sha
    checks = {f.path: f.origin_checksum for f in record.files}
    assert checks["model.safetensors"] == f"sha256:{hashlib.sha256(WEIGHTS).hexdigest()}"
    assert checks["config.json"] == f"git-sha1:{git_blob_id(FILES['config.json'])}"
    assert (cache.model_path(ref.id) / "model.safetensors").read_bytes() == WEIGHTS
    assert not any("pytorch_model.bin" in path for _, path, _ in hub.log)
    ranged = [r for m, p, r in hub.log if m == "GET" and "/resolve/" in p and r]
    assert len(ranged) >= 4  # 3 MiB + 4 bytes in 1 MiB chunks, each through resolve
    other = model_ref("hf://org/open?include=config.json")
    assert other.id != ref.id  # the globs are part of the model's identity


async def test_wrong_lfs_sha256_fails_naming_the_file(hub: Hub, tmp_path: Path) -> None:
    with pytest.raises(VerificationFailed, match=r"model\.safetensors: origin checksum mismatch"):
        await make_cache(tmp_path / "cache", hub).fetch(model_ref("hf://org/liar?include=*.safetensors"))


async def test_signed_url_expiring_mid_fetch_is_replaced_and_staged_bytes_kept(
    hub: Hub, tmp_path: Path
) -> None:
    hub.expire_after, hub.expire_next = 1, 2
    record = await make_cache(tmp_path / "cache", hub).fetch(model_ref("hf://org/open?include=*.safetensors"))
    assert record.total_bytes == len(WEIGHTS)
    assert hub.expire_next == 0 and hub.served == len(WEIGHTS)  # no byte fetched twice


async def test_gated_repo_needs_hf_token(hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = model_ref("hf://org/gated")
    with pytest.raises(FetchFailed, match=r"401.*set HF_TOKEN") as failed:
        await make_cache(tmp_path / "a", hub).fetch(ref)
    assert hub.token not in str(failed.value)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(FetchFailed, match=r"403.*no access"):
        await make_cache(tmp_path / "b", hub).fetch(ref)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    record = await make_cache(tmp_path / "c", hub).fetch(ref)  # the CDN refuses a forwarded token
    assert [f.path for f in record.files] == ["config.json"]


async def test_unknown_revision_fails_clearly(hub: Hub, tmp_path: Path) -> None:
    with pytest.raises(FetchFailed, match="no revision 'v9' of repo org/open"):
        await make_cache(tmp_path / "cache", hub).fetch(model_ref("hf://org/open@v9"))
    with pytest.raises(FetchFailed, match="no file of org/open matches"):
        await make_cache(tmp_path / "cache", hub).fetch(model_ref("hf://org/open?include=*.gguf"))
