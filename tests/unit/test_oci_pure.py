"""The pure parts of the oci:// source: challenges, Docker config logins, index choice, layer kinds,
tar member safety, whiteouts and links, streamed decompression and blob verification."""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from agent.config import add_cache_args, settings_from_args
from agent.fetch.sources.oci_auth import CredentialsError, config_files, find_login, parse_challenges
from agent.fetch.sources.oci_manifest import MODELPACK, OCI_INDEX, OCI_MANIFEST, ManifestError, choose, layers
from agent.fetch.sources.oci_tar import TarRefused, Tree, Verified, clean_name, scan, unpack
from locality.settings import ConfigError

D = "sha256:" + "0" * 64


@pytest.mark.parametrize(
    ("header", "want"),
    [
        pytest.param(
            'Bearer realm="https://auth.io/token",service="reg.io",scope="repository:a/b:pull,push"',
            [
                (
                    "bearer",
                    {
                        "realm": "https://auth.io/token",
                        "service": "reg.io",
                        "scope": "repository:a/b:pull,push",
                    },
                )
            ],
            id="bearer-scope-with-comma",
        ),
        pytest.param('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})], id="basic"),
        pytest.param(
            'Basic realm="x", Bearer realm="https://t/",service=s',
            [("basic", {"realm": "x"}), ("bearer", {"realm": "https://t/", "service": "s"})],
            id="two-challenges-unquoted-param",
        ),
        pytest.param('bearer realm="a\\"b"', [("bearer", {"realm": 'a"b'})], id="escaped-quote"),
        pytest.param("", [], id="empty"),
    ],
)
def test_challenges(header: str, want: list[tuple[str, dict[str, str]]]) -> None:
    assert [(c.scheme, dict(c.params)) for c in parse_challenges(header)] == want


def _config(tmp: Path, name: str, auths: object) -> Path:
    path = tmp / name
    path.write_text(json.dumps({"auths": auths}))
    return path


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("auths", "registry", "want"),
    [
        pytest.param({"reg:5000": {"auth": _b64("u:p:w")}}, "reg:5000", ("u", "p:w", ""), id="auth-b64"),
        pytest.param(
            {"https://reg/v1/": {"username": "u", "password": "p"}}, "reg", ("u", "p", ""), id="url-key"
        ),
        pytest.param({"reg": {"identitytoken": "tok"}}, "reg", ("", "", "tok"), id="identity-token"),
        pytest.param(
            {"https://index.docker.io/v1/": {"auth": _b64("h:p")}}, "docker.io", ("h", "p", ""), id="hub"
        ),
        pytest.param({"other": {"auth": _b64("u:p")}}, "reg", None, id="absent"),
        pytest.param({"reg:5000": {"auth": _b64("u:p")}}, "reg", None, id="port-matters"),
    ],
)
def test_login_lookup(
    tmp_path: Path, auths: object, registry: str, want: tuple[str, str, str] | None
) -> None:
    login = find_login(registry, [_config(tmp_path, "c.json", auths)])
    got = None if login is None else (login.username, login.password, login.identity_token)
    assert got == want
    assert login is None or repr(login) == f"Login(source={login.source!r})"  # no secret in a traceback


def test_first_file_naming_the_registry_wins_and_errors_name_the_file_not_the_secret(tmp_path: Path) -> None:
    secret = _config(tmp_path, "secret.json", {"reg": {"auth": _b64("from:secret")}})
    home = _config(tmp_path, "home.json", {"reg": {"auth": _b64("from:home")}})
    missing = tmp_path / "missing.json"
    login = find_login("reg", [missing, secret, home])
    assert login is not None and (login.username, login.source) == ("from", str(secret))
    bad = _config(tmp_path, "bad.json", {"reg": {"auth": "not-base64-!!hunter2"}})
    with pytest.raises(CredentialsError, match=r"bad\.json") as info:
        find_login("reg", [bad])
    assert "hunter2" not in str(info.value)
    files = config_files(
        "/secret/.dockerconfigjson", {"REGISTRY_AUTH_FILE": "/a", "DOCKER_CONFIG": "/d"}, Path("/h")
    )
    assert files == [
        Path(p) for p in ("/secret/.dockerconfigjson", "/a", "/d/config.json", "/h/.docker/config.json")
    ]


def _entry(platform: dict[str, str] | None = None, **extra: str) -> dict[str, object]:
    out: dict[str, object] = {
        "mediaType": OCI_MANIFEST,
        "digest": "sha256:" + hashlib.sha256(json.dumps([platform, extra]).encode()).hexdigest(),
        "size": 10,
        **extra,
    }
    if platform:
        out["platform"] = platform
    return out


AMD = _entry({"os": "linux", "architecture": "amd64"})
ARM = _entry({"os": "linux", "architecture": "arm64"})
ATTEST = _entry({"os": "unknown", "architecture": "unknown"})
PACK = _entry(artifactType=MODELPACK)
PLAIN = _entry()


@pytest.mark.parametrize(
    ("entries", "arch", "want"),
    [
        pytest.param([AMD, PACK, ARM], "amd64", PACK, id="modelpack-first"),
        pytest.param([AMD, PLAIN], "arm64", PLAIN, id="platform-independent"),
        pytest.param([ATTEST, ARM, AMD], "amd64", AMD, id="node-platform"),
        pytest.param([ATTEST, AMD], "arm64", None, id="no-match"),
    ],
)
def test_index_choice(entries: list[dict[str, object]], arch: str, want: dict[str, object] | None) -> None:
    index = {"mediaType": OCI_INDEX, "manifests": entries}
    if want is None:
        with pytest.raises(ManifestError, match=r"no manifest for linux/arm64.*linux/amd64"):
            choose(index, "linux", arch)
    else:
        assert choose(index, "linux", arch) == want


def _layer(media_type: str, **notes: str) -> dict[str, object]:
    out: dict[str, object] = {"mediaType": media_type, "digest": D, "size": 3}
    if notes:
        out["annotations"] = notes
    return out


@pytest.mark.parametrize(
    ("layer", "artifact", "want"),
    [
        pytest.param(
            _layer("application/vnd.cncf.model.weight.v1.raw", **{"org.cncf.model.filepath": "w/a.bin"}),
            MODELPACK,
            ("w/a.bin", None, ""),
            id="modelpack-raw",
        ),
        pytest.param(
            _layer("application/vnd.cncf.model.weight.config.v1.tar+zstd"),
            MODELPACK,
            (None, "zstd", ""),
            id="modelpack-tar-zstd",
        ),
        pytest.param(
            _layer("application/vnd.cncf.model.doc.v1.tar"), MODELPACK, (None, "", ""), id="modelpack-tar"
        ),
        pytest.param(
            _layer("application/vnd.oci.image.layer.v1.tar", **{"org.opencontainers.image.title": "a.bin"}),
            "application/vnd.unknown.artifact",
            ("a.bin", None, ""),
            id="oras-file-default-tar-type",
        ),
        pytest.param(
            _layer(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                **{"org.opencontainers.image.title": "dir", "io.deis.oras.content.unpack": "true"},
            ),
            "",
            (None, "gzip", ""),
            id="oras-directory",
        ),
        pytest.param(
            _layer("application/vnd.oci.image.layer.v1.tar+gzip"),
            "",
            (None, "gzip", "models"),
            id="modelcar-layer",
        ),
        pytest.param(
            _layer("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            "",
            (None, "gzip", "models"),
            id="docker-layer",
        ),
    ],
)
def test_layer_kinds(
    layer: dict[str, object], artifact: str, want: tuple[str | None, str | None, str]
) -> None:
    manifest = {"mediaType": OCI_MANIFEST, "artifactType": artifact, "layers": [layer]}
    (blob,) = layers(manifest, "models")
    assert (blob.path, blob.compression, blob.root) == want


@pytest.mark.parametrize(
    ("manifest", "why"),
    [
        pytest.param(
            {"mediaType": OCI_MANIFEST, "layers": [_layer("application/x-unknown")]},
            "unsupported layer media type 'application/x-unknown'",
            id="unknown-untitled",
        ),
        pytest.param(
            {"mediaType": OCI_MANIFEST, "layers": [_layer("application/vnd.cncf.model.weight.v1.raw")]},
            "names no file",
            id="raw-without-path",
        ),
        pytest.param({"mediaType": OCI_MANIFEST, "layers": []}, "no layers", id="empty"),
        pytest.param(
            {"mediaType": OCI_MANIFEST, "layers": [{**_layer("a/b"), "digest": "md5:x"}]},
            "only sha256",
            id="bad-digest",
        ),
        pytest.param(
            {"mediaType": OCI_MANIFEST, "layers": [{**_layer("a/b"), "annotations": ["x"]}]},
            "annotations that are not an object",
            id="annotations-list",
        ),
        pytest.param(
            {"mediaType": "application/vnd.oci.artifact.manifest.v1+json", "layers": []},
            "unsupported manifest media type",
            id="artifact-manifest",
        ),
    ],
)
def test_layers_refused(manifest: dict[str, object], why: str) -> None:
    with pytest.raises(ManifestError, match=why):
        layers(manifest, "models")


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        pytest.param("./models/a", "models/a", id="dot-slash"),
        pytest.param("models//a/", "models/a", id="slashes"),
        pytest.param("/etc/passwd", None, id="absolute"),
        pytest.param("models/../../etc", None, id="dotdot"),
        pytest.param("a\\b", None, id="backslash"),
    ],
)
def test_member_names(name: str, clean: str | None) -> None:
    if clean is None:
        with pytest.raises(TarRefused):
            clean_name(name)
    else:
        assert clean_name(name) == clean


def make_tar(entries: list[tuple[str, object]], compression: str = "") -> bytes:
    """``(name, bytes)`` files, ``(name, ("sym"|"hard"|"dir"|"chr", target))`` others."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, what in entries:
            info = tarfile.TarInfo(name)
            if isinstance(what, bytes):
                info.size = len(what)
                tar.addfile(info, io.BytesIO(what))
                continue
            kind, target = what  # type: ignore[misc]
            info.type = {
                "sym": tarfile.SYMTYPE,
                "hard": tarfile.LNKTYPE,
                "dir": tarfile.DIRTYPE,
                "chr": tarfile.CHRTYPE,
            }[kind]
            info.linkname = target
            tar.addfile(info)
    raw = buf.getvalue()
    if compression == "gzip":
        return gzip.compress(raw)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(raw)
    return raw


def _verified(blob: bytes) -> Verified:
    return Verified(io.BytesIO(blob), "sha256:" + hashlib.sha256(blob).hexdigest(), len(blob))


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        pytest.param([("/abs", b"x")], "absolute", id="absolute"),
        pytest.param([("models/../../x", b"x")], "climbs out", id="dotdot"),
        pytest.param(
            [("models/evil", ("sym", "/etc/passwd"))], "outside the model directory", id="symlink-abs"
        ),
        pytest.param([("models/evil", ("sym", "../../etc/passwd"))], "outside", id="symlink-up"),
        pytest.param([("models/evil", ("sym", "../etc"))], "outside", id="symlink-sibling"),
        pytest.param([("etc/x", b"x"), ("models/evil", ("hard", "etc/x"))], "outside", id="hardlink-out"),
        pytest.param([("models/dev", ("chr", ""))], "device or FIFO", id="device"),
    ],
)
def test_hostile_layers_refused(entries: list[tuple[str, object]], why: str) -> None:
    with pytest.raises(TarRefused, match=why):
        scan(_verified(make_tar(entries)), "", "models")


@pytest.mark.parametrize("compression", ["", "gzip", "zstd"])
def test_layers_whiteouts_and_links(compression: str) -> None:
    lower = make_tar(
        [
            ("models/a", b"A"),
            ("models/b", b"B"),
            ("models/sub/c", b"C"),
            ("etc/x", b"X"),
            ("models/sub/d", b"D"),
        ],
        compression,
    )
    upper = make_tar(
        [
            ("models/sub/.wh..wh..opq", b""),
            ("models/sub/e", b"E"),
            ("models/.wh.b", b""),
            ("models/link", ("sym", "a")),
            ("models/abs", ("sym", "/models/sub/e")),
            ("models/hard", ("hard", "models/sub/e")),
            ("models/gone", ("sym", "nothing")),
        ],
        compression,
    )
    tree = Tree()
    for blob in (lower, upper):
        tree.apply(scan(_verified(blob), compression, "models"))
    files = tree.resolved()
    assert sorted(files) == ["a", "abs", "hard", "link", "sub/e"]
    assert files["link"] == files["a"] and files["abs"] == files["hard"] == files["sub/e"]
    assert files["sub/e"].sha256 == "sha256:" + hashlib.sha256(b"E").hexdigest()


def test_unpack_writes_members_and_links_and_checks_the_blob(tmp_path: Path) -> None:
    blob = make_tar([("models/a", b"A" * 3000), ("models/b", b"BB")], "gzip")
    paths = {name: tmp_path / name for name in ("a", "copy", "b")}
    fds = {name: os.open(p, os.O_RDWR | os.O_CREAT) for name, p in paths.items()}
    got: list[int] = []
    unpack(_verified(blob), "gzip", {"models/a": [fds["a"], fds["copy"]], "models/b": [fds["b"]]}, got.append)
    assert paths["a"].read_bytes() == paths["copy"].read_bytes() == b"A" * 3000
    assert paths["b"].read_bytes() == b"BB" and sum(got) == 6002
    for fd in fds.values():
        os.close(fd)
    with pytest.raises(TarRefused, match=f"layer {D} does not match its digest"):
        unpack(Verified(io.BytesIO(blob), D, len(blob)), "gzip", {}, got.append)
    with pytest.raises(TarRefused, match="longer than"):
        unpack(Verified(io.BytesIO(blob), D, 10), "gzip", {}, got.append)


@pytest.mark.parametrize(
    ("argv", "environ", "insecure", "files"),
    [
        pytest.param([], {}, (), (), id="none"),
        pytest.param(
            ["--insecure-registries", " Reg:5000, ,b "], {}, ("reg:5000", "b"), (), id="flag-lower-cased"
        ),
        pytest.param(
            [],
            {
                "MODEL_LOCALITY_INSECURE_REGISTRIES": "r",
                "MODEL_LOCALITY_REGISTRY_AUTH_FILE": "/s/.dockerconfigjson",
                "REGISTRY_AUTH_FILE": "/a.json",
                "DOCKER_CONFIG": "/d",
                "HOME": "/h",
            },
            ("r",),
            ("/s/.dockerconfigjson", "/a.json", "/d/config.json", "/h/.docker/config.json"),
            id="environment-order",
        ),
    ],
)
def test_registry_settings(
    argv: list[str], environ: dict[str, str], insecure: tuple[str, ...], files: tuple[str, ...]
) -> None:
    parser = argparse.ArgumentParser()
    add_cache_args(parser)
    settings = settings_from_args(parser.parse_args(argv), environ)
    assert (settings.insecure_registries, settings.registry_auth_files) == (insecure, files)


@pytest.mark.parametrize("value", ["http://reg:5000", "reg/path", "user@reg"])
def test_insecure_registries_are_names_not_urls(value: str) -> None:
    parser = argparse.ArgumentParser()
    add_cache_args(parser)
    with pytest.raises(ConfigError, match="host\\[:port\\]"):
        settings_from_args(parser.parse_args(["--insecure-registries", value]), {})
