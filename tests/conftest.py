"""Fixtures shared by every test: S3 server, model files (the fake Kubernetes API lives in
``tests/fixtures/fakekube``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.models import minilm_dir, synthetic_model
from tests.fixtures.s3server import S3Server, run_s3_server

pytest_plugins = ["tests.fixtures.fakekube.plugin", "tests.fixtures.realkube_plugin"]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server per pytest run on a free 127.0.0.1 port."""
    with run_s3_server() as server:
        yield server


@pytest.fixture()
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point boto3's standard chain (in this process and children) at the S3 fixture."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server.env


@pytest.fixture(scope="session")
def minilm() -> Path:
    """The real all-MiniLM-L6-v2 model directory (read-only: copy before changing it)."""
    return minilm_dir()


@pytest.fixture(scope="session")
def minilm_s3(s3_server: S3Server, minilm: Path) -> str:
    """The MiniLM model uploaded once per run; returns its ``s3://`` URI."""
    s3_server.upload_dir(minilm, "models", "sentence-transformers/all-MiniLM-L6-v2")
    return "s3://models/sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture()
def synthetic(tmp_path: Path) -> Path:
    """A small three-shard synthetic safetensors model (3 x 2 MiB)."""
    return synthetic_model(tmp_path / "synthetic", shards=3, shard_bytes=2 * 2**20)
