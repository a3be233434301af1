"""Tar layers, streamed: verify the blob's sha256 while reading it, decompress (gzip, zstd), walk
the members, and either list the model's files (``scan``) or write them into staging (``unpack``).

Safety: a member with an absolute path, a ``..`` segment, a NUL, or a link that leaves the model's
directory refuses the whole model, and so does a device or FIFO in it; hard and symbolic links
that stay inside become copies of their target; OCI whiteouts (``.wh.NAME``, ``.wh..wh..opq``)
delete what earlier layers put there. ``scan`` writes nothing, so the model's files and their
sizes are known (and checked against the quota) before a byte is written.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tarfile
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Protocol

import zstandard

_READ = 1 << 20
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"


class TarRefused(ValueError):
    """A hostile or broken layer; the message names the member."""


class _Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Member:
    """Where a model file's bytes are: member ``name`` of layer ``layer``; its size and sha256."""

    layer: str
    name: str
    size: int
    sha256: str


class Verified:
    """A blob's bytes as read, hashed; ``finish`` reads to the end and checks digest and size."""

    def __init__(self, raw: _Reader, digest: str, size: int, stop: threading.Event | None = None) -> None:
        self._raw, self.digest, self.size = raw, digest, size
        self._hash = hashlib.sha256()
        self.read_bytes = 0
        self._stop = stop

    def read(self, n: int = -1, /) -> bytes:
        if self._stop is not None and self._stop.is_set():
            raise InterruptedError("fetch stopped")
        data = self._raw.read(n if n >= 0 else _READ)
        self._hash.update(data)
        self.read_bytes += len(data)
        if self.read_bytes > self.size:
            raise TarRefused(f"layer {self.digest} is longer than its {self.size} bytes")
        return data

    def finish(self) -> None:
        while self.read(_READ):
            pass
        got = "sha256:" + self._hash.hexdigest()
        if self.read_bytes != self.size or got != self.digest:
            raise TarRefused(
                f"layer {self.digest} does not match its digest (got {got}, {self.read_bytes} bytes)"
            )


class _Inflate:
    """A gzip stream, decompressed as it is read (``zlib`` with the gzip header; concatenated members)."""

    def __init__(self, raw: _Reader) -> None:
        self._raw, self._z, self._buf = raw, zlib.decompressobj(31), b""

    def read(self, n: int = -1, /) -> bytes:
        n = n if n >= 0 else _READ
        while len(self._buf) < n:
            chunk = self._z.unconsumed_tail or self._raw.read(_READ)
            if not chunk:
                break
            self._buf += self._z.decompress(chunk, n)
            if self._z.eof:
                rest = self._z.unused_data
                self._z = zlib.decompressobj(31)
                if rest:
                    self._buf += self._z.decompress(rest, n)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


def decompressed(raw: _Reader, compression: str) -> _Reader:
    if compression == "gzip":
        return _Inflate(raw)
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)  # type: ignore[arg-type]
    return raw


def members(stream: _Reader) -> tarfile.TarFile:
    try:
        tar: tarfile.TarFile = tarfile.open(fileobj=stream, mode="r|")  # type: ignore[call-overload]  # noqa: SIM115
        return tar
    except tarfile.TarError as exc:
        raise TarRefused(f"not a tar archive: {exc}") from None


def clean_name(name: str) -> str:
    """A member's name relative to the archive root, or ``TarRefused``."""
    if "\x00" in name or "\\" in name:
        raise TarRefused(f"member {name[:200]!r} has a NUL or backslash")
    if name.startswith("/"):
        raise TarRefused(f"member {name[:200]!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise TarRefused(f"member {name[:200]!r} climbs out with '..'")
    return "/".join(parts)


def inside(root: str, name: str) -> str | None:
    """``name`` relative to ``root`` ("" = everything), or None when it is not below it."""
    if not root:
        return name
    return name[len(root) + 1 :] if name.startswith(root + "/") else None


class Tree:
    """The model's files as the layers so far leave them (``apply`` adds one layer at a time)."""

    def __init__(self) -> None:
        self.files: dict[str, Member] = {}
        self.links: dict[str, str] = {}  # path -> target path (both relative to the model dir)

    def apply(self, layer: LayerScan) -> None:
        """Lay ``layer`` over the tree: its whiteouts hide the layers below it, then its entries land."""
        for rel in layer.whiteouts:
            self.whiteout(rel)
        for rel, member in layer.files.items():
            self.links.pop(rel, None)
            self.files[rel] = member
        for rel, target in layer.links.items():
            self.files.pop(rel, None)
            self.links[rel] = target

    def whiteout(self, rel: str) -> None:
        """Apply whiteout ``rel``: delete what earlier layers put at its name (opaque: in its folder)."""
        base = posixpath.basename(rel)
        folder = posixpath.dirname(rel)
        gone = folder if base == _OPAQUE else posixpath.join(folder, base[len(_WHITEOUT) :])
        for table in (self.files, self.links):
            for path in [p for p in table if p == gone or p.startswith(gone + "/" if gone else "")]:
                del table[path]

    def resolved(self) -> dict[str, Member]:
        """Every file, links replaced by their targets' members (dangling links are dropped)."""
        out = dict(self.files)
        for path, first in self.links.items():
            target = first
            for _ in range(40):  # a link to a link: follow, but not around a loop
                if target not in self.links:
                    break
                target = self.links[target]
            if target in self.files:
                out[path] = self.files[target]
        return out


@dataclass(frozen=True, slots=True)
class LayerScan:
    """What one layer puts below the model's directory (a pure function of the layer and the root)."""

    files: Mapping[str, Member]
    links: Mapping[str, str]
    whiteouts: tuple[str, ...]


def scan(stream: Verified, compression: str, root: str) -> LayerScan:
    """One layer's members below ``root`` (hashing each file's bytes); the blob is verified at the end."""
    files: dict[str, Member] = {}
    links: dict[str, str] = {}
    whiteouts: list[str] = []

    def visit(tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        name = clean_name(info.name)
        rel = inside(root, name)
        if rel is None or rel == "":
            return
        if posixpath.basename(rel).startswith(_WHITEOUT):
            whiteouts.append(rel)
        elif info.isfile():
            files[rel] = Member(stream.digest, info.name, info.size, _sha256(tar.extractfile(info)))
            links.pop(rel, None)
        elif info.issym() or info.islnk():
            links[rel] = _link_target(root, name, info)
            files.pop(rel, None)
        elif not info.isdir():
            raise TarRefused(f"member {info.name!r} is a device or FIFO")

    walk(stream, compression, visit)
    return LayerScan(files, links, tuple(whiteouts))


def walk(
    stream: Verified, compression: str, visit: Callable[[tarfile.TarFile, tarfile.TarInfo], None]
) -> None:
    """``visit`` every member of the layer, then check the blob; a blob that does not decompress or
    is no tar is refused naming the layer (as not matching its digest, when it does not)."""
    try:
        with members(decompressed(stream, compression)) as tar:
            for info in tar:
                visit(tar, info)
    except (zlib.error, tarfile.TarError, EOFError, zstandard.ZstdError) as exc:
        stream.finish()  # a blob that is not the named one says so first
        raise TarRefused(f"layer {stream.digest} is not a readable tar archive: {exc}") from None
    stream.finish()


def _link_target(root: str, name: str, info: tarfile.TarInfo) -> str:
    """A link's target relative to the model dir; ``TarRefused`` when it leaves it."""
    link = info.linkname
    if info.islnk():
        target = clean_name(link)
    elif link.startswith("/"):
        target = posixpath.normpath(link).lstrip("/")  # absolute: from the image's root
    else:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), link))
    rel = inside(root, target) if not target.startswith("..") else None
    if not rel or rel.startswith(".."):
        raise TarRefused(f"member {info.name!r} links to {link!r}, outside the model directory")
    return rel


def _sha256(data: IO[bytes] | None) -> str:
    h = hashlib.sha256()
    if data is not None:
        while block := data.read(_READ):
            h.update(block)
    return "sha256:" + h.hexdigest()


def unpack(
    stream: Verified, compression: str, sinks: Mapping[str, list[int]], on_bytes: Callable[[int], None]
) -> None:
    """Write members named in ``sinks`` (member name -> staging fds) from one layer; verify the blob."""

    def visit(tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        fds = sinks.get(info.name)
        data = tar.extractfile(info) if fds and info.isfile() else None
        if not fds or data is None:
            return
        pos = 0
        while block := data.read(_READ):
            for fd in fds:
                os.pwrite(fd, block, pos)
            pos += len(block)
            on_bytes(len(block) * len(fds))
        for fd in fds:
            os.ftruncate(fd, pos)

    walk(stream, compression, visit)
