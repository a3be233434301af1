"""The oci:// source against a real registry (Debian's docker-registry, tests/fixtures/registry.py):
ModelPack, ORAS and modelcar artifacts pushed over the registry's HTTP API, indexes, auth (htpasswd,
bearer tokens over TLS), tampering, moved tags, hostile tars, redirects and resume after kill -9."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import Settings
from agent.fetch.cache import Cache, FetchFailed, NoSpace, VerificationFailed
from agent.fetch.sources.network import tls_context
from locality.identity import model_ref
from tests.fixtures.registry import (
    OCI_INDEX,
    OCI_MANIFEST,
    REFRESH_TOKEN,
    Registry,
    descriptor,
    run_front,
    run_registry,
)

MiB = 2**20
MODELPACK = "application/vnd.cncf.model.manifest.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
FILEPATH = "org.cncf.model.filepath"
TITLE = "org.opencontainers.image.title"


def weights(n: int, seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + bytes([seed % 256]) * (n % 32)


def push_artifact(
    reg: Registry, repo: str, tag: str, layers: list[tuple[str, bytes, dict[str, str]]], artifact: str
) -> str:
    """Layers ``(media type, bytes, annotations)`` under an artifact manifest; its digest."""
    config = reg.push_blob(repo, b"{}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact,
        "config": descriptor("application/vnd.oci.empty.v1+json", config),
        "layers": [descriptor(kind, reg.push_blob(repo, data), **notes) for kind, data, notes in layers],
    }
    return reg.push_manifest(repo, tag, manifest)[0]


def push_modelpack(reg: Registry, repo: str, tag: str, files: dict[str, bytes]) -> str:
    layers = [(WEIGHT, data, {FILEPATH: path}) for path, data in files.items()]
    return push_artifact(reg, repo, tag, layers, MODELPACK)


def tar_gz(entries: list[tuple[str, bytes | tuple[str, str]]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, what in entries:
            info = tarfile.TarInfo(name)
            if isinstance(what, bytes):
                info.size = len(what)
                tar.addfile(info, io.BytesIO(what))
            else:
                info.type = tarfile.SYMTYPE if what[0] == "sym" else tarfile.DIRTYPE
                info.linkname = what[1]
                tar.addfile(info)
    return gzip.compress(buf.getvalue(), mtime=0)


def push_image(
    reg: Registry, repo: str, tag: str | None, layers: list[bytes], arch: str = "amd64"
) -> tuple[str, int]:
    """A modelcar-style image: tar+gzip layers and an image config; ``(digest, size)``."""
    image_config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "rootfs": {
                "type": "layers",
                "diff_ids": [
                    "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest() for layer in layers
                ],
            },
        }
    ).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", reg.push_blob(repo, image_config)),
        "layers": [
            descriptor("application/vnd.oci.image.layer.v1.tar+gzip", reg.push_blob(repo, layer))
            for layer in layers
        ],
    }
    return reg.push_manifest(repo, tag or f"arch-{arch}", manifest)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with run_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


def make_cache(root: Path, *hosts: str, auth_file: Path | None = None) -> Cache:
    settings = Settings(
        cache_dir=root,
        chunk_bytes=MiB,
        concurrency=2,
        attempts=3,
        insecure_registries=hosts,
        registry_auth_files=(str(auth_file),) if auth_file else (),
    )
    return Cache(settings.validate())


async def test_modelpack_artifact_with_several_weight_layers(registry: Registry, tmp_path: Path) -> None:
    files = {
        "model-00001.safetensors": weights(3 * MiB + 7, 1),
        "model-00002.safetensors": weights(MiB, 2),
        "config.json": b'{"model_type": "bert"}',
    }
    digest = push_modelpack(registry, "models/pack", "v1", files)
    with run_front(registry) as front:
        ref = model_ref(f"oci://{front.host}/models/pack:v1")
        record = await make_cache(tmp_path / "c", front.host).fetch(ref)
    assert record.revision == digest.removeprefix("sha256:")  # the manifest digest is the revision
    folder = make_cache(tmp_path / "c").model_path(ref.id)
    assert {p: (folder / p).read_bytes() for p in files} == files
    checks = {f.path: f.origin_checksum for f in record.files}
    assert checks["config.json"] == "sha256:" + hashlib.sha256(files["config.json"]).hexdigest()
    ranged = [r for p, r in front.served if r]
    assert len(ranged) >= 5  # 3 MiB + 7 bytes and 1 MiB in 1 MiB chunks: ranged GETs of the blobs


async def test_oras_artifact_titles_are_files(registry: Registry, tmp_path: Path) -> None:
    layer = "application/vnd.oci.image.layer.v1.tar"  # what `oras push` gives a plain file by default
    push_artifact(
        registry,
        "models/oras",
        "latest",
        [(layer, b"w" * 5000, {TITLE: "weights.bin"}), (layer, b"{}", {TITLE: "config.json"})],
        "application/vnd.example.model",
    )
    ref = model_ref(f"oci://{registry.host}/models/oras")
    record = await make_cache(tmp_path / "c", registry.host).fetch(ref)
    assert sorted(f.path for f in record.files) == ["config.json", "weights.bin"]


async def test_modelcar_image_in_an_index_takes_models_dir_with_whiteouts(
    registry: Registry, tmp_path: Path
) -> None:
    lower = tar_gz(
        [
            ("etc/passwd", b"root"),
            ("models/", ("dir", "")),
            ("models/w.bin", weights(2 * MiB, 3)),
            ("models/old.bin", b"old"),
            ("models/sub/a.txt", b"a"),
        ]
    )
    upper = tar_gz(
        [("models/.wh.old.bin", b""), ("models/latest.bin", ("sym", "w.bin")), ("models/sub/b.txt", b"b")]
    )
    amd = push_image(registry, "models/car", None, [lower, upper])
    arm = push_image(registry, "models/car", None, [tar_gz([("models/arm.bin", b"arm")])], arch="arm64")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {**descriptor(OCI_MANIFEST, arm), "platform": {"os": "linux", "architecture": "arm64"}},
            {**descriptor(OCI_MANIFEST, amd), "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }
    index_digest, _ = registry.push_manifest("models/car", "v1", index)
    cache = make_cache(tmp_path / "c", registry.host)
    record = await cache.fetch(model_ref(f"oci://{registry.host}/models/car:v1"))
    assert record.revision == index_digest.removeprefix("sha256:")
    assert sorted(f.path for f in record.files) == ["latest.bin", "sub/a.txt", "sub/b.txt", "w.bin"]
    folder = cache.model_path(record.id)
    assert (folder / "latest.bin").read_bytes() == (folder / "w.bin").read_bytes() == weights(2 * MiB, 3)
    assert not (folder / "latest.bin").is_symlink()
    sub = await cache.fetch(model_ref(f"oci://{registry.host}/models/car:v1?path=/models/sub"))
    assert sorted(f.path for f in sub.files) == ["a.txt", "b.txt"]


async def test_zstd_image_layers(registry: Registry, tmp_path: Path) -> None:
    import zstandard

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("models/z.bin")
        info.size = 3000
        tar.addfile(info, io.BytesIO(b"z" * 3000))
    layer = zstandard.ZstdCompressor().compress(raw.getvalue())
    config = registry.push_blob("models/zst", b'{"os": "linux", "architecture": "amd64"}')
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [
            descriptor("application/vnd.oci.image.layer.v1.tar+zstd", registry.push_blob("models/zst", layer))
        ],
    }
    registry.push_manifest("models/zst", "v1", manifest)
    cache = make_cache(tmp_path / "c", registry.host)
    record = await cache.fetch(model_ref(f"oci://{registry.host}/models/zst:v1"))
    assert (cache.model_path(record.id) / "z.bin").read_bytes() == b"z" * 3000


async def test_tampered_blob_is_refused_naming_the_file(registry: Registry, tmp_path: Path) -> None:
    files = {"good.bin": weights(MiB, 4), "bad.bin": weights(2 * MiB, 5)}
    push_modelpack(registry, "models/tamper", "v1", files)
    with run_front(registry) as front:
        front.flip.add("sha256:" + hashlib.sha256(files["bad.bin"]).hexdigest())
        cache = make_cache(tmp_path / "c", front.host)
        with pytest.raises(VerificationFailed, match=r"bad\.bin.*checksum"):
            await cache.fetch(model_ref(f"oci://{front.host}/models/tamper:v1"))
    assert not (tmp_path / "c" / "models").exists() or not os.listdir(tmp_path / "c" / "models")


async def test_tampered_tar_layer_is_refused_naming_the_layer(registry: Registry, tmp_path: Path) -> None:
    layer = tar_gz([("models/w.bin", weights(MiB, 6))])
    push_image(registry, "models/tamper-car", "v1", [layer])
    with run_front(registry) as front:
        front.flip.add("sha256:" + hashlib.sha256(layer).hexdigest())
        with pytest.raises(FetchFailed, match="sha256:") as failed:
            await make_cache(tmp_path / "c", front.host).fetch(
                model_ref(f"oci://{front.host}/models/tamper-car:v1")
            )
    assert "models/tamper-car:v1" in str(failed.value)


async def test_a_moved_tag_is_a_new_revision(registry: Registry, tmp_path: Path) -> None:
    first = push_modelpack(registry, "models/moving", "stable", {"w.bin": b"one" * 1000})
    cache = make_cache(tmp_path / "c", registry.host)
    ref = model_ref(f"oci://{registry.host}/models/moving:stable")
    old = await cache.fetch(ref)
    assert old.revision == first.removeprefix("sha256:")
    assert await cache.refresh(ref) is None  # same manifest: nothing moves
    second = push_modelpack(registry, "models/moving", "stable", {"w.bin": b"two" * 1000})
    new = await cache.refresh(ref)
    assert new is not None and new.revision == second.removeprefix("sha256:")
    assert (cache.model_path(ref.id) / "w.bin").read_bytes() == b"two" * 1000
    pinned = model_ref(f"oci://{registry.host}/models/moving@{first}")
    assert (await cache.fetch(pinned)).revision == old.revision  # the digest form is immutable content


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        pytest.param([("models/../../escape.txt", b"x")], "climbs out", id="dotdot"),
        pytest.param([("/models/abs.txt", b"x")], "absolute", id="absolute"),
        pytest.param(
            [("models/link", ("sym", "/etc/passwd"))], "outside the model directory", id="symlink-out"
        ),
    ],
)
async def test_hostile_tar_is_refused_with_nothing_written(
    registry: Registry, tmp_path: Path, entries: list[tuple[str, bytes | tuple[str, str]]], why: str
) -> None:
    repo = "models/hostile-" + "-".join(why.split()[:2]).strip("'")
    push_image(registry, repo, "v1", [tar_gz([("models/ok.bin", b"ok"), *entries])])
    root = tmp_path / "c"
    with pytest.raises(FetchFailed, match=why):
        await make_cache(root, registry.host).fetch(model_ref(f"oci://{registry.host}/{repo}:v1"))
    names = await asyncio.to_thread(lambda: {p.name for p in tmp_path.rglob("*") if p.is_file()})
    assert not names & {"escape.txt", "abs.txt", "ok.bin", "link"}  # refused at listing: nothing written


async def test_an_image_larger_than_the_quota_is_refused_before_a_byte_is_written(
    registry: Registry, tmp_path: Path
) -> None:
    layer = tar_gz([("models/zeros.bin", bytes(64 * MiB))])  # 64 MiB that gzip makes ~64 KiB
    assert len(layer) < MiB
    push_image(registry, "models/bomb", "v1", [layer])
    root = tmp_path / "c"
    with run_front(registry) as front:
        settings = Settings(cache_dir=root, quota_bytes=8 * MiB, insecure_registries=(front.host,))
        with pytest.raises(NoSpace, match="no room for"):
            await Cache(settings.validate()).fetch(model_ref(f"oci://{front.host}/models/bomb:v1"))
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    assert [p for p, _ in front.served if p.endswith(digest)] == [
        f"/v2/models/bomb/blobs/{digest}"
    ]  # scan only
    sizes = await asyncio.to_thread(lambda: [p.stat().st_size for p in root.rglob("*") if p.is_file()])
    assert sum(sizes) < MiB  # records and locks only: the 64 MiB were never written


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        pytest.param("models/absent:v1", r"models/absent:v1: manifest not found"),
        pytest.param("models/pack:nope", r"models/pack:nope: manifest not found"),
    ],
)
async def test_missing_reference_names_it(registry: Registry, tmp_path: Path, uri: str, why: str) -> None:
    push_modelpack(registry, "models/pack", "v1", {"a.bin": b"a"})
    with pytest.raises(FetchFailed, match=why):
        await make_cache(tmp_path / "c", registry.host).fetch(model_ref(f"oci://{registry.host}/{uri}"))


async def test_403_names_the_reference_and_5xx_is_retried(registry: Registry, tmp_path: Path) -> None:
    push_modelpack(registry, "models/pack", "v1", {"a.bin": b"a"})
    with run_front(registry) as front:
        front.status["/v2/models/pack/manifests/v1"] = 403
        uri = model_ref(f"oci://{front.host}/models/pack:v1")
        with pytest.raises(FetchFailed, match=r"models/pack:v1: registry answered 403"):
            await make_cache(tmp_path / "a", front.host).fetch(uri)
        front.status["/v2/models/pack/manifests/v1"] = 503
        with pytest.raises(
            FetchFailed, match=r"HTTP 503 for the manifest \(UNAVAILABLE\).*gave up after 3 tries"
        ):
            await make_cache(tmp_path / "b", front.host).fetch(uri)


async def test_unsupported_layer_media_type_names_the_reference(registry: Registry, tmp_path: Path) -> None:
    push_artifact(registry, "models/odd", "v1", [("application/x-strange", b"?", {})], "application/x-odd")
    with pytest.raises(
        FetchFailed, match=r"models/odd:v1: unsupported layer media type 'application/x-strange'"
    ):
        await make_cache(tmp_path / "c", registry.host).fetch(
            model_ref(f"oci://{registry.host}/models/odd:v1")
        )


async def test_plain_http_only_for_listed_registries(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(FetchFailed, match="MODEL_LOCALITY_INSECURE_REGISTRIES"):
        await make_cache(tmp_path / "c").fetch(model_ref(f"oci://{registry.host}/models/pack:v1"))


async def test_htpasswd_auth_from_a_docker_config_and_redirects_without_credentials(tmp_path: Path) -> None:
    with run_registry(tmp_path / "reg", auth="basic") as reg:
        push_modelpack(reg, "models/private", "v1", {"w.bin": weights(2 * MiB, 8)})
        with run_front(reg) as front:
            front.redirect_blobs = True  # the blob host answers 400 if it receives credentials
            uri = model_ref(f"oci://{front.host}/models/private:v1")
            with pytest.raises(FetchFailed, match=r"models/private:v1: registry answered 401.*no login"):
                await make_cache(tmp_path / "a", front.host).fetch(uri)
            wrong = Registry(front.host, "http", "basic").docker_config(tmp_path / "wrong", password="nope")
            with pytest.raises(
                FetchFailed, match=r"401.*login .* from .*wrong/config.json was refused"
            ) as err:
                await make_cache(tmp_path / "b", front.host, auth_file=wrong).fetch(uri)
            assert "nope" not in str(err.value)
            good = Registry(front.host, "http", "basic").docker_config(tmp_path / "good")
            record = await make_cache(tmp_path / "c", front.host, auth_file=good).fetch(uri)
            assert record.total_bytes == 2 * MiB
            assert any(p.startswith("/v2/") for p, _ in front.served)  # blobs came through the redirect


async def test_token_auth_over_tls_with_a_private_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with run_registry(tmp_path / "reg", auth="token", tls=True) as reg:
        assert reg.ca is not None
        push_modelpack(reg, "models/tok", "v1", {"w.bin": weights(MiB + 5, 9)})
        config = reg.docker_config(tmp_path / "docker")
        uri = model_ref(f"oci://{reg.host}/models/tok:v1")
        with pytest.raises(FetchFailed, match=r"not trusted.*SSL_CERT_FILE"):
            await make_cache(tmp_path / "a", auth_file=config).fetch(uri)
        monkeypatch.setenv("SSL_CERT_FILE", str(reg.ca.ca_file))
        oauth = reg.docker_config(tmp_path / "oauth", identity_token=REFRESH_TOKEN)
        tls_context.cache_clear()  # the data path keeps one context per CA bundle for the process
        try:
            record = await make_cache(tmp_path / "b", auth_file=config).fetch(uri)
            assert record.total_bytes == MiB + 5
            record = await make_cache(tmp_path / "d", auth_file=oauth).fetch(uri)
            assert record.total_bytes == MiB + 5  # an identitytoken is used as an OAuth2 refresh token
        finally:
            tls_context.cache_clear()


def test_kill_9_mid_blob_then_fetch_again_resumes(registry: Registry, tmp_path: Path) -> None:
    data = weights(12 * MiB, 10)
    push_modelpack(registry, "models/big", "v1", {"w.bin": data})
    root = tmp_path / "cache"
    with run_front(registry) as front:
        front.throttle_bps = 6 * MiB
        uri = f"oci://{front.host}/models/big:v1"
        argv = [
            sys.executable,
            "-m",
            "agent",
            "fetch",
            uri,
            "--cache-dir",
            str(root),
            "--chunk-size",
            "1Mi",
            "--concurrency",
            "2",
            "--insecure-registries",
            front.host,
        ]
        journal = root / "staging" / model_ref(uri).id / "journal"
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (
                not journal.exists() or len(journal.read_text().splitlines()) < 4
            ):
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        finished = {json.loads(line)[1] for line in journal.read_text().splitlines() if line.endswith("]")}
        assert 4 <= len(finished) < 12
        before = len(front.served)
        front.throttle_bps = 0
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        again = [r for _, r in front.served[before:] if r]
    starts = {int(r.split("=")[1].split("-")[0]) // MiB for r in again}
    assert starts and not starts & finished, (starts, finished)
    assert (Path(done.stdout.strip()) / "w.bin").read_bytes() == data
