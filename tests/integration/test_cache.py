"""The cache facade against real origins: moto's S3 server and an aiohttp range server with faults."""

from __future__ import annotations

import asyncio
import filecmp
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.config import Settings
from agent.fetch.cache import Cache, FetchFailed, NoSpace, Pinned, Progress, UnknownModel
from agent.fetch.chunks import RetryPolicy
from agent.lifecycle.views import record_view
from locality.identity import model_ref
from locality.recordcheck import verify_model_dir
from tests.fixtures.models import synthetic_model, write_safetensors
from tests.fixtures.origin import Faults, run_origin
from tests.fixtures.s3server import S3Server

MiB = 2**20
FAST_RETRY = RetryPolicy(attempts=5, base=0.01, cap=0.05)


def make_cache(root: Path, **kw: object) -> Cache:
    settings = Settings(cache_dir=root, chunk_bytes=MiB, concurrency=4, **kw).validate()  # type: ignore[arg-type]
    return Cache(settings, retry=FAST_RETRY)


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    if files_a != files_b:
        return False
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def debris(root: Path) -> list[str]:
    """Everything under staging/ and trash/ (lock files aside)."""
    return sorted(
        p.relative_to(root).as_posix()
        for sub in ("staging", "trash")
        if (root / sub).exists()
        for p in (root / sub).rglob("*")
        if not p.name.endswith(".lock")
    )


async def test_minilm_fetched_byte_exact_from_s3(
    s3_env: dict[str, str], minilm_s3: str, minilm: Path, tmp_path: Path
) -> None:
    seen: list[Progress] = []
    cache = make_cache(tmp_path / "cache")
    record = await cache.fetch(model_ref(minilm_s3), seen.append)
    model_dir = cache.model_path(record.id)
    assert same_tree(model_dir, minilm)
    assert record.total_bytes == sum(p.stat().st_size for p in files_under(minilm))
    assert seen[-1] == Progress(record.total_bytes, record.total_bytes)
    assert cache.verify(record.id) == []
    assert verify_model_dir(model_dir) == []
    assert debris(cache.root) == []
    view = record_view(record, model_dir)
    assert view["state"] == "ready" and view["bytes_done"] == view["bytes_total"] == record.total_bytes
    # A second cache on the same root sees the committed model without fetching.
    again = make_cache(tmp_path / "cache")
    assert [r.id for r in again.scan()] == [record.id]
    assert await again.fetch(model_ref(minilm_s3)) == record


async def test_multi_shard_model_over_http_and_s3(
    s3_server: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    src = synthetic_model(tmp_path / "src", shards=3, shard_bytes=3 * MiB + 123)
    s3_server.upload_dir(src, "shards", "org/synthetic")
    cache = make_cache(tmp_path / "cache")
    record = await cache.fetch(model_ref("s3://shards/org/synthetic"))
    assert same_tree(cache.model_path(record.id), src)
    shard = next(f for f in record.files if f.path == "model-00002-of-00003.safetensors")
    assert shard.size == 3 * MiB + 123 and len(shard.chunk_digests) == 4
    with run_origin(src) as origin:
        name = "model-00002-of-00003.safetensors"
        one = await cache.fetch(model_ref(f"{origin.url}/{name}"))
        assert filecmp.cmp(cache.model_path(one.id) / name, src / name, shallow=False)
        assert len(origin.gets(f"/{name}")) == 4  # one ranged GET per 1 MiB chunk
        assert one.files[0].chunk_digests == shard.chunk_digests


async def test_transient_500s_and_resets_survived(tmp_path: Path) -> None:
    src = write_safetensors(tmp_path / "src" / "w.safetensors", 5 * MiB, seed=3)
    with run_origin(src.parent, faults=Faults(fail_first=3, reset_first=2, fail_head=2)) as origin:
        cache = make_cache(tmp_path / "cache")
        record = await cache.fetch(model_ref(f"{origin.url}/w.safetensors"))
    assert filecmp.cmp(cache.model_path(record.id) / "w.safetensors", src, shallow=False)
    assert len(origin.gets()) >= 5 + 3 + 2
    assert [m for m, _, _ in origin.log].count("HEAD") == 3  # the listing was retried too


async def test_stalled_origin_times_out_and_is_retried(tmp_path: Path) -> None:
    src = write_safetensors(tmp_path / "src" / "w.safetensors", 2 * MiB, seed=4)
    with run_origin(src.parent, faults=Faults(stall_first=1, stall_seconds=3.0)) as origin:
        settings = Settings(cache_dir=tmp_path / "cache", chunk_bytes=MiB, concurrency=1).validate()
        retry = RetryPolicy(attempts=3, base=0.01, cap=0.05, read_timeout=0.3)
        record = await Cache(settings, retry=retry).fetch(model_ref(f"{origin.url}/w.safetensors"))
        assert origin.faults.stall_first == 0
        assert len(origin.gets()) == 3  # chunk 0 stalled, resumed from where it stopped; chunk 1
        resumed = origin.gets()[1]
    assert resumed != f"bytes=0-{MiB - 1}" and resumed.endswith(f"-{MiB - 1}")
    assert filecmp.cmp(tmp_path / "cache" / "models" / record.id / "w.safetensors", src, shallow=False)


async def test_transient_503s_from_s3_survived(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    src = synthetic_model(tmp_path / "src", shards=2, shard_bytes=2 * MiB)
    s3_server.upload_dir(src, "flaky", "m")
    with run_origin(upstream=s3_server.endpoint, faults=Faults()) as proxy:
        for key, value in s3_server.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        cache = make_cache(tmp_path / "cache")
        proxy.faults.fail_first = 0
        ref = model_ref("s3://flaky/m")
        # Faults only for the data path: listing first, then every GET of bytes fails twice.
        files = await _listing(ref)
        proxy.faults.fail_first, proxy.faults.reset_first = 2, 1
        assert files
        record = await cache.fetch(ref)
    assert same_tree(cache.model_path(record.id), src)
    assert proxy.faults.fail_first == 0 and proxy.faults.reset_first == 0


async def _listing(ref: object) -> list[object]:
    from agent.fetch.sources import open_source

    source = open_source(ref)  # type: ignore[arg-type]
    try:
        return list(await source.list_files())
    finally:
        await source.close()


@pytest.mark.parametrize(
    ("status", "needle"), [pytest.param(404, "404", id="not-found"), pytest.param(403, "403", id="forbidden")]
)
async def test_permanent_http_errors_fail_fast(status: int, needle: str, tmp_path: Path) -> None:
    src = write_safetensors(tmp_path / "src" / "w.safetensors", 2 * MiB)
    with run_origin(src.parent, faults=Faults(status={"/w.safetensors": status})) as origin:
        cache = make_cache(tmp_path / "cache")
        with pytest.raises(FetchFailed, match=needle):
            await cache.fetch(model_ref(f"{origin.url}/w.safetensors"))
        assert len(origin.log) <= 2  # no retries of a permanent answer
    assert cache.records() == [] and debris(cache.root) == []


async def test_missing_s3_object_fails_fast(
    s3_server: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    s3_server.create_bucket("empty")
    cache = make_cache(tmp_path / "cache")
    with pytest.raises(FetchFailed, match="no objects"):
        await cache.fetch(model_ref("s3://empty/nothing/here"))
    with pytest.raises(FetchFailed, match=r"NoSuchBucket|404|no objects"):
        await cache.fetch(model_ref("s3://no-such-bucket/x"))


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("evil/../escape.bin", id="dotdot"),
        pytest.param("evil//abs.bin", id="absolute"),
        pytest.param("evil/a\\b.bin", id="backslash"),
        pytest.param("evil/./dot.bin", id="dot"),
    ],
)
async def test_hostile_keys_abort_the_model(
    key: str, s3_server: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    bucket = "hostile"
    s3_server.put(bucket, "evil/config.json", b"{}")
    s3_server.put(bucket, key, b"x" * 100)
    cache = make_cache(tmp_path / "cache")
    try:
        with pytest.raises(FetchFailed, match="refusing"):
            await cache.fetch(model_ref(f"s3://{bucket}/evil"))
    finally:
        s3_server.client().delete_object(Bucket=bucket, Key=key)
    assert cache.records() == [] and debris(cache.root) == []
    assert [p for p in files_under(tmp_path) if not p.name.endswith(".lock")] == []


async def test_quota_below_model_size_is_no_space(tmp_path: Path) -> None:
    src = write_safetensors(tmp_path / "src" / "w.safetensors", 4 * MiB)
    with run_origin(src.parent) as origin:
        cache = make_cache(tmp_path / "cache", quota_bytes=3 * MiB)
        with pytest.raises(NoSpace, match="no room"):
            await cache.fetch(model_ref(f"{origin.url}/w.safetensors"))
        assert origin.gets() == []
    assert cache.records() == []


@contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A small tmpfs at ``path`` (we run as root in CI); skip when mounting is not permitted."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_disk_full_refused_before_fetching(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_safetensors(src / "small.safetensors", MiB, seed=1)
    write_safetensors(src / "big.safetensors", 4 * MiB, seed=2)
    with tmpfs(tmp_path / "small", "size=3m") as mnt, run_origin(src) as origin:
        cache = make_cache(mnt / "cache", quota_bytes=2**40)  # only the filesystem can say no
        small = await cache.fetch(model_ref(f"{origin.url}/small.safetensors"))
        with pytest.raises(NoSpace, match="free on disk"):
            await cache.fetch(model_ref(f"{origin.url}/big.safetensors"))
        assert origin.gets("/big.safetensors") == []
        assert [r.id for r in cache.records()] == [small.id]
        assert cache.verify(small.id) == []
        assert debris(cache.root) == []


async def test_enospc_while_writing_removes_staging(
    s3_server: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    # Out of inodes is a real ENOSPC from the kernel that byte accounting cannot foresee.
    for i in range(40):
        s3_server.put("inodes", f"many/part-{i:02d}.bin", bytes([i]) * 1000)
    with tmpfs(tmp_path / "few", "size=8m,nr_inodes=24") as mnt:
        cache = make_cache(mnt / "cache")
        with pytest.raises(NoSpace, match="disk full"):
            await cache.fetch(model_ref("s3://inodes/many"))
        assert cache.records() == [] and debris(cache.root) == []


async def test_eviction_under_pins(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in ("a", "b", "c", "d"):
        write_safetensors(src / f"{name}.safetensors", 2 * MiB, seed=ord(name))
    write_safetensors(src / "e.safetensors", 4 * MiB, seed=5)
    clock = iter(range(1000, 2000))
    with run_origin(src) as origin:
        settings = Settings(
            cache_dir=tmp_path / "cache",
            chunk_bytes=MiB,
            quota_bytes=7 * MiB,
            high_watermark=0.9,
            low_watermark=0.5,
        ).validate()
        changed: list[str] = []
        cache = Cache(settings, on_change=changed.append, now=lambda: float(next(clock)), retry=FAST_RETRY)
        refs = {n: model_ref(f"{origin.url}/{n}.safetensors") for n in "abcde"}
        cache.pin(refs["a"].id, "pod/default/uses-a")  # before it exists: applied at commit
        for name in "abc":
            await cache.fetch(refs[name])
        assert cache.get(refs["a"].id) is not None and cache.get(refs["a"].id).pins == {"pod/default/uses-a"}  # type: ignore[union-attr]
        cache.touch(refs["b"].id)  # b is now more recent than c
        await cache.fetch(refs["d"])  # 8 MiB > 0.9 * 7: evict down to 3.5 MiB incl. d: c, then b
        assert {r.id for r in cache.records()} == {refs["a"].id, refs["d"].id}
        assert changed[-3:] == [refs["c"].id, refs["b"].id, refs["d"].id]
        with pytest.raises(Pinned):
            cache.remove(refs["a"].id)
        cache.pin(refs["d"].id, "distribution/x")
        with pytest.raises(NoSpace, match="pinned"):
            await cache.fetch(refs["e"])  # 4 pinned + 4 MiB > 7 MiB quota
        assert {r.id for r in cache.records()} == {refs["a"].id, refs["d"].id}
        cache.unpin(refs["d"].id, "distribution/x")
        assert cache.gc() == []  # 4 MiB of 7: under the high watermark
        cache.remove(refs["a"].id, force=True)
        with pytest.raises(UnknownModel):
            cache.remove(refs["a"].id)


async def test_verify_catches_a_flipped_byte(tmp_path: Path) -> None:
    src = synthetic_model(tmp_path / "src", shards=2, shard_bytes=2 * MiB + 7)
    with run_origin(src) as origin:
        cache = make_cache(tmp_path / "cache")
        name = "model-00002-of-00002.safetensors"
        record = await cache.fetch(model_ref(f"{origin.url}/{name}"))
    path = cache.model_path(record.id) / name
    with path.open("r+b") as f:
        f.seek(MiB + 5)
        byte = f.read(1)
        f.seek(MiB + 5)
        f.write(bytes([byte[0] ^ 0x01]))
    problems = cache.verify(record.id)
    assert len(problems) == 1 and name in problems[0] and str(MiB) in problems[0]
    assert verify_model_dir(cache.model_path(record.id)) == problems
    assert verify_model_dir(tmp_path) is None


async def test_cancel_then_resume_skips_finished_chunks(tmp_path: Path) -> None:
    src = write_safetensors(tmp_path / "src" / "w.safetensors", 8 * MiB, seed=9)
    with run_origin(src.parent, faults=Faults(throttle_bps=8 * MiB)) as origin:
        settings = Settings(cache_dir=tmp_path / "cache", chunk_bytes=MiB, concurrency=2).validate()
        cache = Cache(settings, retry=FAST_RETRY)
        ref = model_ref(f"{origin.url}/w.safetensors")
        midway = asyncio.Event()

        def progress(p: Progress) -> None:
            if p.bytes_done >= 3 * MiB:
                midway.set()

        task = asyncio.create_task(cache.fetch(ref, progress))
        await asyncio.wait_for(midway.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        journal = (cache.root / "staging" / ref.id / "journal").read_text().splitlines()
        finished = {json.loads(line)[1] for line in journal}
        assert finished and cache.get(ref.id) is None
        first = len(origin.gets())
        origin.faults.throttle_bps = 0
        record = await make_cache(cache.root).fetch(ref)
        again = origin.gets()[first:]
    starts = {int(r.split("=")[1].split("-")[0]) for r in again}
    assert not starts & {i * MiB for i in finished}
    assert filecmp.cmp(cache.model_path(record.id) / "w.safetensors", src, shallow=False)


def test_scan_cleans_debris_and_rolls_forward(tmp_path: Path) -> None:
    cache = make_cache(tmp_path / "cache")
    cache.scan()
    root = cache.root
    (root / "models" / "0123456789abcdef").mkdir()
    (root / "models" / "0123456789abcdef" / "model.safetensors").write_bytes(b"half")
    (root / "staging" / "fedcba9876543210" / "files").mkdir(parents=True)
    (root / "trash" / "old").mkdir()
    (root / "records" / ".x.json.tmp").write_text("{")
    assert make_cache(root).scan() == []
    assert sorted(os.listdir(root / "models")) == []
    assert debris(root) == []


async def test_origin_without_range_support(tmp_path: Path) -> None:
    src = write_safetensors(tmp_path / "src" / "w.safetensors", 3 * MiB + 1, seed=11)
    with run_origin(src.parent) as ranged:
        want = await make_cache(tmp_path / "c1").fetch(model_ref(f"{ranged.url}/w.safetensors"))
    with run_origin(src.parent, faults=Faults(ignore_range=True, reset_first=1)) as plain:
        cache = make_cache(tmp_path / "c2")
        got = await cache.fetch(model_ref(f"{plain.url}/w.safetensors"))
        assert all(r == "" for r in plain.gets())  # never asked for a range it cannot give
    assert got.files[0].chunk_digests == want.files[0].chunk_digests
    assert filecmp.cmp(cache.model_path(got.id) / "w.safetensors", src, shallow=False)


async def test_remove_drops_the_staging_of_an_interrupted_fetch(tmp_path: Path) -> None:
    src = write_safetensors(tmp_path / "src" / "w.safetensors", 4 * MiB, seed=2)
    with run_origin(src.parent, faults=Faults(throttle_bps=4 * MiB)) as origin:
        cache = make_cache(tmp_path / "cache")
        ref = model_ref(f"{origin.url}/w.safetensors")
        started = asyncio.Event()
        task = asyncio.create_task(cache.fetch(ref, lambda p: p.bytes_done and started.set()))
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (cache.root / "staging" / ref.id).is_dir()
    cache.remove(ref.id, force=True)
    assert debris(cache.root) == []
    with pytest.raises(UnknownModel):
        cache.remove(ref.id)


async def test_crash_between_record_and_rename_is_rolled_forward(tmp_path: Path) -> None:
    src = write_safetensors(tmp_path / "src" / "w.safetensors", 2 * MiB, seed=8)
    with run_origin(src.parent) as origin:
        cache = make_cache(tmp_path / "cache")
        record = await cache.fetch(model_ref(f"{origin.url}/w.safetensors"))
        gone = await cache.fetch(model_ref(f"{origin.url}/w.safetensors?v=2"))
    root = cache.root
    # The state a kill -9 leaves between "record written" and "staging renamed into models/".
    (root / "staging" / record.id).mkdir()
    os.rename(root / "models" / record.id, root / "staging" / record.id / "files")
    # And a record whose model directory vanished (a removal cut short).
    shutil.rmtree(root / "models" / gone.id)
    again = make_cache(root)
    assert [r.id for r in again.scan()] == [record.id]
    assert again.verify(record.id) == []
    assert not (root / "records" / f"{gone.id}.json").exists()
    assert debris(root) == []


async def test_concurrent_fetches_of_one_model_download_once(tmp_path: Path) -> None:
    src = write_safetensors(tmp_path / "src" / "w.safetensors", 3 * MiB, seed=12)
    with run_origin(src.parent, faults=Faults(throttle_bps=16 * MiB)) as origin:
        ref = model_ref(f"{origin.url}/w.safetensors")
        one, two = make_cache(tmp_path / "cache"), make_cache(tmp_path / "cache")  # e.g. agent + CLI
        records = await asyncio.gather(one.fetch(ref), one.fetch(ref), two.fetch(ref))
        assert len(origin.gets()) == 3  # three 1 MiB chunks, fetched by whoever held the lock
    assert records[0] == records[1] == records[2]
    assert filecmp.cmp(one.model_path(ref.id) / "w.safetensors", src, shallow=False)
