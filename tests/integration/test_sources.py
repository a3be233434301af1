"""One conformance test for every source, on real servers: moto's S3 and an aiohttp range server."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.fetch.sources import Source, SourceError, open_source
from agent.fetch.sources.transfer import ChunkJob, RangeReader
from locality.identity import model_ref
from tests.fixtures.models import synthetic_model, write_safetensors
from tests.fixtures.origin import Faults, run_origin
from tests.fixtures.s3server import S3Server

MiB = 2**20


@contextmanager
def s3_model(s3_server: S3Server, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    src = synthetic_model(tmp_path / "src", shards=2, shard_bytes=MiB + 17)
    (src / "sub").mkdir()
    (src / "sub" / "empty.txt").write_bytes(b"")
    s3_server.upload_dir(src, "conformance", "org/model")
    s3_server.put("conformance", "org/model-sibling/x", b"not part of the model")
    yield "s3://conformance/org/model", src


@contextmanager
def http_model(s3_server: S3Server, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    src = tmp_path / "src"
    write_safetensors(src / "model.safetensors", 2 * MiB + 5, seed=4)
    with run_origin(src) as origin:
        yield f"{origin.url}/model.safetensors", src


def read_all(source: Source, path: Path, file: object, piece: int) -> None:
    """Read a file through the shared data path in ranges of ``piece`` bytes."""
    from agent.fetch.sources.base import RemoteFile

    assert isinstance(file, RemoteFile)
    reader = RangeReader(threading.Event(), buffer_bytes=64 * 1024)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for offset in range(0, file.size, piece):
            job = ChunkJob(fd=fd, offset=offset, length=min(piece, file.size - offset), file_size=file.size)
            reader.fetch(source.target(file), job, file.etag, lambda n: None)
            assert job.received == job.length
    finally:
        os.close(fd)
        reader.close()


@pytest.mark.parametrize("make", [pytest.param(s3_model, id="s3"), pytest.param(http_model, id="http")])
async def test_source_conformance(
    make: object, s3_server: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    with make(s3_server, tmp_path) as (uri, src):  # type: ignore[operator]
        source = open_source(model_ref(uri))
        try:
            files = await source.list_files()
            want = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
            assert [f.path for f in files] == want
            for f in files:
                assert f.size == (src / f.path).stat().st_size and f.etag
                out = tmp_path / "out" / f.path
                out.parent.mkdir(parents=True, exist_ok=True)
                read_all(source, out, f, piece=300 * 1024)
                assert out.read_bytes() == (src / f.path).read_bytes()
        finally:
            await source.close()


async def test_s3_single_object_uri(s3_server: S3Server, s3_env: dict[str, str]) -> None:
    s3_server.put("conformance", "single/weights.bin", b"w" * 1000)
    source = open_source(model_ref("s3://conformance/single/weights.bin"))
    try:
        files = await source.list_files()
    finally:
        await source.close()
    assert [(f.path, f.size, f.key) for f in files] == [("weights.bin", 1000, "single/weights.bin")]


@pytest.mark.parametrize(
    ("status", "permanent"),
    [
        pytest.param(404, True, id="404"),
        pytest.param(403, True, id="403"),
        pytest.param(503, False, id="503"),
    ],
)
async def test_http_listing_errors(status: int, permanent: bool, tmp_path: Path) -> None:
    with run_origin(tmp_path, faults=Faults(status={"/m.bin": status})) as origin:
        source = open_source(model_ref(f"{origin.url}/m.bin"))
        with pytest.raises(SourceError) as caught:
            await source.list_files()
    assert caught.value.permanent is permanent and str(status) in caught.value.message


async def test_http_origin_without_range_support(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "m.bin", MiB + 3)
    with run_origin(tmp_path, faults=Faults(ignore_range=True)) as origin:
        source = open_source(model_ref(f"{origin.url}/m.bin"))
        (file,) = await source.list_files()
    assert file.ranges is False and file.size == MiB + 3


async def test_http_origin_refusing_head_is_asked_with_a_one_byte_get(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "m.bin", MiB + 9)
    with run_origin(tmp_path, faults=Faults(refuse_head=True)) as origin:
        source = open_source(model_ref(f"{origin.url}/m.bin"))
        (file,) = await source.list_files()
        assert [(m, r) for m, _, r in origin.log] == [("HEAD", ""), ("GET", "bytes=0-0")]
    assert file.ranges is True and file.size == MiB + 9 and file.etag


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 made with the openssl CLI (skip when it is missing)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_origin(tmp_path: Path) -> None:
    """TLS end to end, through the CLI so that the process starts with the operator's CA bundle."""
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    write_safetensors(tmp_path / "src" / "m.safetensors", 2 * MiB + 11, seed=6)
    argv = [
        sys.executable,
        "-m",
        "agent",
        "fetch",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--chunk-size",
        "1Mi",
    ]
    with run_origin(tmp_path / "src", tls=tls) as origin:
        uri = f"{origin.url}/m.safetensors"
        assert uri.startswith("https://")
        untrusted = subprocess.run([*argv, uri], capture_output=True, text=True, timeout=60)
        assert untrusted.returncode != 0 and "certificate" in untrusted.stderr
        assert origin.gets() == []  # refused at once, not retried
        env = {**os.environ, "SSL_CERT_FILE": str(cert)}
        done = subprocess.run([*argv, uri], capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        assert len(origin.gets()) == 3
    got = Path(done.stdout.strip()) / "m.safetensors"
    assert got.read_bytes() == (tmp_path / "src" / "m.safetensors").read_bytes()
