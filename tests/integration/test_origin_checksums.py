"""Origin checksums end to end: S3 additional checksums and HTTP digests checked before commit."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from agent.config import Settings
from agent.fetch.cache import Cache, VerificationFailed
from agent.fetch.chunks import RetryPolicy
from locality.identity import model_ref
from locality.records import load_record
from tests.fixtures.models import write_safetensors
from tests.fixtures.origin import Faults, run_origin
from tests.fixtures.s3server import S3Server

MiB = 2**20


def make_cache(root: Path) -> Cache:
    settings = Settings(cache_dir=root, chunk_bytes=MiB, concurrency=4).validate()
    return Cache(settings, retry=RetryPolicy(attempts=3, base=0.01, cap=0.02))


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.mark.parametrize("algorithm", ["SHA256", "CRC64NVME", "CRC32C", "CRC32"])
async def test_s3_checksum_checked_and_recorded(
    algorithm: str, s3_server: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    body = bytes(range(256)) * (6 * 1024 + 3)  # more than one 1 MiB chunk
    s3_server.create_bucket("sums")
    s3_server.client().put_object(
        Bucket="sums", Key=f"{algorithm}/w.bin", Body=body, ChecksumAlgorithm=algorithm
    )
    cache = make_cache(tmp_path / "cache")
    ref = model_ref(f"s3://sums/{algorithm}")
    record = await cache.fetch(ref)
    (file,) = record.files
    assert file.origin_checksum.startswith(f"{algorithm.lower()}:")
    assert record.revision and load_record(cache.layout, ref.id) == record


async def test_s3_wrong_checksum_fails_naming_the_file(
    s3_server: S3Server, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s3_server.put("sums", "bad/config.json", b"{}")
    s3_server.client().put_object(
        Bucket="sums", Key="bad/w.bin", Body=b"w" * (MiB + 5), ChecksumAlgorithm="SHA256"
    )
    lie = {"x-amz-checksum-sha256": b64_sha256(b"other bytes")}
    faults = Faults(headers={"/sums/bad/w.bin": lie})
    with run_origin(upstream=s3_server.endpoint, faults=faults) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        cache = make_cache(tmp_path / "cache")
        ref = model_ref("s3://sums/bad")
        with pytest.raises(VerificationFailed, match=r"w\.bin: origin checksum mismatch"):
            await cache.fetch(ref)
    assert cache.get(ref.id) is None and not cache.model_path(ref.id).exists()
    assert load_record(cache.layout, ref.id) is None


@pytest.mark.parametrize(
    ("header", "fmt"),
    [
        pytest.param("Repr-Digest", "sha-256=:{}:", id="repr-digest"),
        pytest.param("Digest", "SHA-256={}", id="digest"),
    ],
)
async def test_http_digest_checked(header: str, fmt: str, tmp_path: Path) -> None:
    data = write_safetensors(tmp_path / "src" / "m.bin", 2 * MiB + 7, seed=3).read_bytes()
    good = {header: fmt.format(b64_sha256(data))}
    with run_origin(tmp_path / "src", faults=Faults(headers={"/m.bin": good})) as origin:
        record = await make_cache(tmp_path / "ok").fetch(model_ref(f"{origin.url}/m.bin"))
    assert record.files[0].origin_checksum == f"sha256:{hashlib.sha256(data).hexdigest()}"

    bad = {header: fmt.format(b64_sha256(b"not it"))}
    with run_origin(tmp_path / "src", faults=Faults(headers={"/m.bin": bad})) as origin:
        cache = make_cache(tmp_path / "bad")
        with pytest.raises(VerificationFailed, match=r"m\.bin: origin checksum mismatch"):
            await cache.fetch(model_ref(f"{origin.url}/m.bin"))
    assert list((tmp_path / "bad" / "models").iterdir()) == []


async def test_no_origin_checksum_is_said_in_the_record(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "src" / "m.bin", MiB + 1)
    with run_origin(tmp_path / "src") as origin:
        record = await make_cache(tmp_path / "cache").fetch(model_ref(f"{origin.url}/m.bin"))
    assert [f.origin_checksum for f in record.files] == ["none"]
    assert record.revision
