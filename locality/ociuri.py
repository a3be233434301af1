"""OCI registry model URIs: ``oci://REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST][?path=DIR]``.

Pure. The registry (``host[:port]``) is lower-cased; the repository follows the distribution
spec's grammar (lower-case path components); a reference without tag or digest is ``:latest``,
as ``docker pull`` has it; with both, the digest alone names the content (the tag is dropped,
so ``repo:v1@sha256:X`` and ``repo@sha256:X`` are one model). Docker Hub's aliases become
``docker.io`` and its one-segment names ``library/NAME``. ``?path=DIR`` names the directory of
a modelcar image that holds the model (default ``/models``, then omitted; ``/`` for the whole
image); it is ignored for artifacts, whose files are the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

DEFAULT_IMAGE_DIR = "models"
MAX_REPOSITORY = 255

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^(\[[0-9a-f:.]+\]|{_LABEL}(\.{_LABEL})*)(:[0-9]{{1,5}})?$")
_COMPONENT = re.compile(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_DIR_SEGMENT = re.compile(r"^[A-Za-z0-9_.@+-]{1,255}$")
_DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")


@dataclass(frozen=True, slots=True)
class OciModel:
    """What a normalised ``oci://`` URI names. ``image_dir`` is relative ("" = the image's root)."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None
    image_dir: str = DEFAULT_IMAGE_DIR

    @property
    def reference(self) -> str:
        """The manifest reference to ask the registry for: the digest, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def display(self) -> str:
        """``REGISTRY/REPOSITORY:TAG`` or ``...@DIGEST``, as in error messages."""
        sep = "@" if self.digest else ":"
        return f"{self.registry}/{self.repository}{sep}{self.reference}"


def parse_oci(authority: str, path: str) -> OciModel:
    """The parts of a normalised ``oci://`` URI (``ModelRef.authority`` and ``.path``)."""
    head, _, query = path.partition("?")
    repo, at, digest = head.partition("@")
    tag = None
    if not at:
        repo, _, tag = repo.rpartition(":")
    image_dir = dict(parse_qsl(query)).get("path", DEFAULT_IMAGE_DIR)
    return OciModel(authority, repo, tag, digest or None, "" if image_dir == "/" else image_dir)


def normalize_oci(netloc: str, path: str, query: str) -> tuple[str, str, str, str]:
    """``(normalized, "oci", registry, REPO(:TAG|@DIGEST)[?path=DIR])``; ``ValueError`` says why."""
    registry = _registry(netloc)
    name, tag, digest = _split_reference(path.strip("/"))
    repository = _repository(name, registry)
    rest = f"{repository}@{digest}" if digest else f"{repository}:{tag or 'latest'}"
    image_dir = _image_dir(query)
    if image_dir != DEFAULT_IMAGE_DIR:
        rest = f"{rest}?path={image_dir or '/'}"
    return f"oci://{registry}/{rest}", "oci", registry, rest


def _registry(netloc: str) -> str:
    if "@" in netloc:
        raise ValueError("credentials in the URI are not allowed; use a Docker config file")
    host = netloc.lower()
    if not host or not _HOST.match(host):
        raise ValueError(f"invalid registry {netloc!r} (oci://REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST])")
    port = host.rpartition(":")[2] if not host.endswith("]") and ":" in host else None
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"invalid registry port in {netloc!r}")
    return "docker.io" if host in _DOCKER_HUB else host


def _split_reference(path: str) -> tuple[str, str | None, str | None]:
    """``name[:tag][@digest]`` -> its three parts (the tag's ``:`` is after the last ``/``)."""
    name, at, digest = path.partition("@")
    if at and not _DIGEST.match(digest):
        raise ValueError(f"invalid digest {digest[:80]!r}: only sha256:<64 lower-case hex> is supported")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
        if not _TAG.match(tag):
            raise ValueError(f"invalid tag {tag[:140]!r}")
    return name, tag, digest or None


def _repository(name: str, registry: str) -> str:
    components = name.split("/")
    if not name or not all(_COMPONENT.match(c) for c in components):
        raise ValueError(
            f"invalid repository {name[:140]!r}: lower-case components of [a-z0-9] joined by . _ __ - and /"
        )
    if registry == "docker.io" and len(components) == 1:
        name = f"library/{name}"
    if len(registry) + 1 + len(name) > MAX_REPOSITORY:
        raise ValueError(f"repository name is longer than {MAX_REPOSITORY} characters")
    return name


def _image_dir(query: str) -> str:
    """The ``path=`` of the query as a relative directory ("" = root); only ``path`` is allowed."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise ValueError(f"oci:// query cannot be parsed: {exc}") from exc
    keys = [k for k, _ in pairs]
    if any(k != "path" for k in keys) or len(keys) > 1:
        raise ValueError("oci:// URIs take only one path= (the model's directory in an image)")
    if not pairs:
        return DEFAULT_IMAGE_DIR
    segments = [s for s in pairs[0][1].split("/") if s]
    for segment in segments:
        if segment in (".", "..") or not _DIR_SEGMENT.match(segment):
            raise ValueError(f"invalid path= segment {segment[:80]!r} (no '.', '..' or special characters)")
    return "/".join(segments)
