"""Private endpoints on the data path: a CA-signed HTTPS S3 endpoint and a forward proxy on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Settings
from agent.fetch.cache import Cache, FetchFailed
from agent.fetch.chunks import RetryPolicy
from locality.identity import model_ref
from tests.fixtures.models import write_safetensors
from tests.fixtures.origin import run_origin
from tests.fixtures.proxy import run_proxy
from tests.fixtures.s3server import S3Server
from tests.fixtures.tlsca import make_ca

MiB = 2**20
PROXY_VARS = (
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "https_proxy",
    "http_proxy",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)


def make_cache(root: Path) -> Cache:
    settings = Settings(cache_dir=root, chunk_bytes=MiB, concurrency=3).validate()
    return Cache(settings, retry=RetryPolicy(attempts=2, base=0.01, cap=0.02))


def seed(s3_server: S3Server, tmp_path: Path) -> bytes:
    data = write_safetensors(tmp_path / "w.safetensors", 2 * MiB + 9, seed=8).read_bytes()
    s3_server.put("private", "m/w.safetensors", data)
    return data


async def test_ca_signed_s3_endpoint_with_the_ca_configured(
    s3_server: S3Server, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = seed(s3_server, tmp_path)
    ca = make_ca(tmp_path / "pki")
    with run_origin(upstream=s3_server.endpoint, tls=ca.server_context()) as tls_s3:
        monkeypatch.setenv("AWS_ENDPOINT_URL", tls_s3.url)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(ca.ca_file))
        cache = make_cache(tmp_path / "cache")
        record = await cache.fetch(model_ref("s3://private/m"))
        assert len(tls_s3.gets("/private/m/w.safetensors")) == 3  # the data path went to it too
    assert (cache.model_path(record.id) / "w.safetensors").read_bytes() == data


async def test_ca_signed_s3_endpoint_without_the_ca_fails_naming_the_setting(
    s3_server: S3Server, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seed(s3_server, tmp_path)
    ca = make_ca(tmp_path / "pki")
    with run_origin(upstream=s3_server.endpoint, tls=ca.server_context()) as tls_s3:
        monkeypatch.setenv("AWS_ENDPOINT_URL", tls_s3.url)
        with pytest.raises(FetchFailed, match="AWS_CA_BUNDLE"):
            await make_cache(tmp_path / "cache").fetch(model_ref("s3://private/m"))
        assert tls_s3.gets() == []


async def test_https_s3_through_a_connect_proxy(
    s3_server: S3Server, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = seed(s3_server, tmp_path)
    ca = make_ca(tmp_path / "pki")
    with run_origin(upstream=s3_server.endpoint, tls=ca.server_context()) as tls_s3, run_proxy() as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", tls_s3.url)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(ca.ca_file))
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        cache = make_cache(tmp_path / "cache")
        record = await cache.fetch(model_ref("s3://private/m"))
    assert (cache.model_path(record.id) / "w.safetensors").read_bytes() == data
    tunnels = [t for m, t in proxy.seen if m == "CONNECT"]
    assert tunnels and set(tunnels) == {f"127.0.0.1:{tls_s3.port}"}
    assert len(tunnels) >= 2  # boto3's listing and at least one data-path connection


async def test_http_origin_through_a_proxy_in_absolute_form(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_safetensors(tmp_path / "src" / "m.bin", 2 * MiB + 1)
    with run_origin(tmp_path / "src") as origin, run_proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        record = await make_cache(tmp_path / "cache").fetch(model_ref(f"{origin.url}/m.bin"))
        assert len(origin.gets("/m.bin")) == 3
    assert record.total_bytes == 2 * MiB + 1
    gets = [t for m, t in proxy.seen if m == "GET"]
    assert gets and all(t == f"{origin.url}/m.bin" for t in gets)


async def test_no_proxy_bypasses_the_proxy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_safetensors(tmp_path / "src" / "m.bin", MiB + 1)
    with run_origin(tmp_path / "src") as origin, run_proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        await make_cache(tmp_path / "cache").fetch(model_ref(f"{origin.url}/m.bin"))
    assert proxy.seen == []
