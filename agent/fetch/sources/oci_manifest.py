"""OCI manifests, purely: which manifest of an index to take, and what each layer of it is (a file
of the model, an archive to unpack, or something to refuse).

Layers become ``Blob``s: ``path`` set for a file (ModelPack ``.raw`` layers at their
``org.cncf.model.filepath``, titled ORAS layers at their ``org.opencontainers.image.title``),
``compression`` set for a tar archive (ModelPack ``.tar*`` layers and ORAS directories unpack at
the model's root; the layers of an image unpack from the URI's ``path=``, ``/models`` by default).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEXES = (OCI_INDEX, DOCKER_LIST)
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((*MANIFESTS, *INDEXES))
MODELPACK = "application/vnd.cncf.model.manifest.v1+json"
MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
FILEPATH = "org.cncf.model.filepath"
TITLE = "org.opencontainers.image.title"
ORAS_UNPACK = "io.deis.oras.content.unpack"
_MODEL_LAYER = re.compile(r"^application/vnd\.cncf\.model\.[a-z.]+\.v1\.(raw|tar|tar\+gzip|tar\+zstd)$")
_IMAGE_LAYERS = {
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "",
}
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


class ManifestError(ValueError):
    """A manifest or index that cannot be used; the message says why (the caller adds the reference)."""


@dataclass(frozen=True, slots=True)
class Blob:
    """One layer to fetch: a file (``path``) or an archive (``compression``: "", "gzip", "zstd")."""

    digest: str
    size: int
    media_type: str
    path: str | None = None
    compression: str | None = None
    root: str = ""  # for archives: the directory of the archive that holds the model ("" = all)


def parse(body: bytes, media_type: str) -> dict[str, Any]:
    """The manifest JSON; its own ``mediaType`` (when present) must agree with the Content-Type."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ManifestError(f"manifest is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    kind = doc.get("mediaType") or media_type.split(";", 1)[0].strip()
    if kind not in (*MANIFESTS, *INDEXES):
        raise ManifestError(f"unsupported manifest media type {kind!r}")
    doc["mediaType"] = kind
    return doc


def choose(index: Mapping[str, Any], os_name: str, arch: str) -> Mapping[str, Any]:
    """The descriptor to follow from an index: a ModelPack artifact, else a platform-independent
    manifest, else the one for ``os_name``/``arch``; attestations and unknown platforms never."""
    entries = [_descriptor(d) for d in index.get("manifests") or []]
    usable = [d for d in entries if (d.get("platform") or {}).get("os") != "unknown"]
    for pick in (
        lambda d: d.get("artifactType") == MODELPACK,
        lambda d: not d.get("platform"),
        lambda d: (d["platform"].get("os"), d["platform"].get("architecture")) == (os_name, arch),
    ):
        found = [d for d in usable if pick(d)]
        if found:
            return found[0]
    platforms = sorted({_platform(d) for d in usable})
    have = ", ".join(platforms) or "none"
    raise ManifestError(f"no manifest for {os_name}/{arch} in the index (it has {have})")


def layers(manifest: Mapping[str, Any], image_dir: str) -> list[Blob]:
    """Every layer of ``manifest`` as a ``Blob``; ``ManifestError`` for one that cannot be used."""
    if manifest.get("mediaType") not in MANIFESTS:
        raise ManifestError(f"unsupported manifest media type {manifest.get('mediaType')!r}")
    config = manifest.get("config")
    config_type = config.get("mediaType") if isinstance(config, Mapping) else None
    modelpack = manifest.get("artifactType") == MODELPACK or config_type == MODELPACK_CONFIG
    out = [_layer(_descriptor(d), image_dir, modelpack) for d in manifest.get("layers") or []]
    if not out:
        raise ManifestError("the manifest has no layers")
    return out


def _layer(d: Mapping[str, Any], image_dir: str, modelpack: bool) -> Blob:
    kind = str(d["mediaType"])
    notes = d.get("annotations") or {}
    digest, size = d["digest"], d["size"]
    model = _MODEL_LAYER.match(kind)
    if model:
        fmt = model.group(1)
        if fmt == "raw":
            path = notes.get(FILEPATH) or notes.get(TITLE)
            if not path:
                raise ManifestError(f"layer {digest} ({kind}) names no file ({FILEPATH})")
            return Blob(digest, size, kind, path=str(path))
        return Blob(digest, size, kind, compression=fmt.partition("+")[2])
    title = notes.get(TITLE)
    compression = _IMAGE_LAYERS.get(kind)
    if title and str(notes.get(ORAS_UNPACK, "")).lower() == "true" and compression is not None:
        return Blob(digest, size, kind, compression=compression)  # an ORAS directory
    if title:
        return Blob(digest, size, kind, path=str(title))  # ORAS: a titled layer is a file
    if compression is not None and not modelpack:
        return Blob(digest, size, kind, compression=compression, root=image_dir)  # an image (modelcar)
    raise ManifestError(f"unsupported layer media type {kind!r} (layer {digest} has no file name)")


def _descriptor(d: Any) -> Mapping[str, Any]:
    if not isinstance(d, Mapping) or not isinstance(d.get("mediaType"), str):
        raise ManifestError("a descriptor without a mediaType")
    if not isinstance(d.get("digest"), str) or not _DIGEST.match(d["digest"]):
        raise ManifestError(f"unsupported digest {str(d.get('digest'))[:80]!r} (only sha256)")
    size = d.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"descriptor {d['digest']} has no valid size")
    for field in ("annotations", "platform"):
        if not isinstance(d.get(field) or {}, Mapping):
            raise ManifestError(f"descriptor {d['digest']} has {field} that are not an object")
    return d


def _platform(d: Mapping[str, Any]) -> str:
    p = d.get("platform") or {}
    return f"{p.get('os')}/{p.get('architecture')}"


def node_platform(machine: str) -> str:
    """Go's architecture name for ``platform.machine()`` (what an index's platforms use)."""
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}.get(
        machine, machine.lower()
    )
