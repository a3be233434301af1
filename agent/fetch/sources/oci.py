"""OCI registry source: ``oci://REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST][?path=DIR]``.

The listing resolves the reference to a manifest (through an index: the artifact, or this node's
platform); its digest is every file's ``version`` and so the model's revision. A file layer
(ModelPack ``.raw``, a titled ORAS layer) is one file, fetched through the ranged data path from
``/v2/REPO/blobs/DIGEST`` and checked against that sha256 before commit. A tar layer (ModelPack
``.tar*``, an ORAS directory, an image's layers: plain, gzip, zstd) is streamed once at listing
time to learn its files (names, sizes, sha256: what the verified blob holds), and once more to
unpack them (``unpack``); its scan is kept per layer digest, so a refresh whose layers did not
change moves no bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import platform
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping

from agent.fetch.sources.base import HttpTarget, SourceError, checked_files
from agent.fetch.sources.network import environ_proxy
from agent.fetch.sources.oci_client import RegistryClient, RegistryOptions
from agent.fetch.sources.oci_manifest import (
    ACCEPT,
    INDEXES,
    Blob,
    ManifestError,
    choose,
    layers,
    node_platform,
    parse,
)
from agent.fetch.sources.oci_tar import LayerScan, Member, TarRefused, Tree, Verified, scan, unpack
from agent.fetch.sources.timeouts import Timeouts
from agent.fetch.sources.transfer import Stopped
from agent.store.files import RemoteFile
from locality.identity import ModelRef
from locality.ociuri import OciModel, parse_oci

_SCANS: OrderedDict[tuple[str, str], LayerScan] = OrderedDict()  # (layer digest, root) -> scan
_SCANS_KEPT = 256
_SCANS_LOCK = threading.Lock()


class OciSource:
    """One repository reference on one registry."""

    def __init__(
        self, ref: ModelRef, timeouts: Timeouts | None = None, options: RegistryOptions | None = None
    ) -> None:
        self.uri = ref.uri
        self.model: OciModel = parse_oci(ref.authority, ref.path)
        self._client = RegistryClient(self.model, options or RegistryOptions(), timeouts or Timeouts())
        self._members: dict[str, Member] = {}  # path -> where its bytes are, for archive files
        self._layers: dict[str, Blob] = {}
        self.revision: str | None = None

    async def list_files(self) -> list[RemoteFile]:
        return await asyncio.to_thread(self._list)

    def target(self, file: RemoteFile) -> HttpTarget:
        url = self._client.blob_url(file.key)
        auth = self._client.authorization()
        headers = (("Authorization", auth),) if auth else ()
        return HttpTarget(url=url, headers=headers, proxy=environ_proxy(url), ca_setting="SSL_CERT_FILE")

    def archive_of(self, file: RemoteFile) -> str | None:
        """The layer digest an archive file is unpacked from; None for a file fetched by ranges."""
        member = self._members.get(file.path)
        return member.layer if member is not None else None

    def unpack(
        self, archive: str, fds: Mapping[str, int], stop: threading.Event, on_bytes: Callable[[int], None]
    ) -> None:
        """Stream layer ``archive`` once and write the files ``fds`` names (path -> staging fd)."""
        sinks: dict[str, list[int]] = {}
        for path, fd in fds.items():
            sinks.setdefault(self._members[path].name, []).append(fd)
        blob = self._layers[archive]
        resp = self._client.get(self._client.blob_url(archive))
        try:
            unpack(Verified(resp, blob.digest, blob.size, stop), blob.compression or "", sinks, on_bytes)
        except TarRefused as exc:
            raise SourceError(f"{self.uri}: {exc}", permanent=True) from None
        except InterruptedError:
            raise Stopped() from None
        except (OSError, http.client.HTTPException) as exc:
            raise SourceError(f"{self.uri}: reading layer {archive}: {exc}", permanent=False) from None
        finally:
            resp.close()

    async def close(self) -> None:
        return None

    def _list(self) -> list[RemoteFile]:
        digest, manifest = self._resolve()
        self.revision = digest.removeprefix("sha256:")
        try:
            blobs = layers(manifest, self.model.image_dir)
        except ManifestError as exc:
            raise SourceError(f"{self.model.display}: {exc}", permanent=True) from None
        files = [self._file(b.path, b.size, b.digest, b.digest) for b in blobs if b.path is not None]
        trees: dict[str, Tree] = {}
        for blob in (b for b in blobs if b.compression is not None):
            self._layers[blob.digest] = blob
            trees.setdefault(blob.root, Tree()).apply(self._scan(blob))
        for root, tree in trees.items():
            for path, member in tree.resolved().items():
                self._members[path] = member
                files.append(self._file(path, member.size, member.sha256, f"{member.layer}#{root}"))
        if trees and not files:
            where = f"/{self.model.image_dir}"
            raise SourceError(f"{self.model.display}: the image has no files under {where}", permanent=True)
        return checked_files(self.uri, files)

    def _file(self, path: str, size: int, checksum: str, key: str) -> RemoteFile:
        return RemoteFile(path=path, size=size, etag=None, key=key, checksum=checksum, version=self.revision)

    def _resolve(self) -> tuple[str, dict[str, object]]:
        """The manifest the reference names (following an index) and the digest the reference has."""
        digest, doc = self._manifest(self.model.reference)
        if doc["mediaType"] in INDEXES:
            try:
                entry = choose(doc, "linux", node_platform(platform.machine()))
            except ManifestError as exc:
                raise SourceError(f"{self.model.display}: {exc}", permanent=True) from None
            _, doc = self._manifest(str(entry["digest"]))
        return digest, doc

    def _manifest(self, reference: str) -> tuple[str, dict[str, object]]:
        url = f"{self._client.base}/v2/{self.model.repository}/manifests/{reference}"
        resp = self._client.get(url, ACCEPT)
        try:
            body = resp.read(4 << 20)
        finally:
            resp.close()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise SourceError(
                f"{self.model.display}: the manifest does not match its digest {reference}", permanent=True
            )
        try:
            return digest, parse(body, resp.getheader("Content-Type") or "")
        except ManifestError as exc:
            raise SourceError(f"{self.model.display}: {exc}", permanent=True) from None

    def _scan(self, blob: Blob) -> LayerScan:
        key = (blob.digest, blob.root)
        with _SCANS_LOCK:
            if key in _SCANS:
                _SCANS.move_to_end(key)
                return _SCANS[key]
        resp = self._client.get(self._client.blob_url(blob.digest))
        try:
            got = scan(Verified(resp, blob.digest, blob.size), blob.compression or "", blob.root)
        except TarRefused as exc:
            raise SourceError(f"refusing {self.uri}: {exc}", permanent=True) from None
        except (OSError, http.client.HTTPException) as exc:
            raise SourceError(f"{self.uri}: reading layer {blob.digest}: {exc}", permanent=False) from None
        finally:
            resp.close()
        with _SCANS_LOCK:
            _SCANS[key] = got
            while len(_SCANS) > _SCANS_KEPT:
                _SCANS.popitem(last=False)
        return got
