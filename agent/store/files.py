"""The files the store is asked to stage: ``RemoteFile``, and the pure names derived from a listing.

This is the data half of the door between the fetch path and the store: a source lists
``RemoteFile``s, the store stages and commits exactly those (``agent.store.staging``,
``agent.store.commit``). ``revision_of`` names what the origin says the content is.

A Hugging Face model's revision is its commit sha (every file of it carries that sha as its
``version``: 40 hex digits, which no S3 VersionId or HTTP date is), an OCI model's its manifest
digest (64 hex digits, the sha256 without ``sha256:``); any other model's is 16 hex
digits of xxh3_64 over ``path\\0size\\0pin\\n`` lines of its files, where ``pin`` is the ETag, else
the origin checksum, else the version (HTTP Last-Modified) of each file. Re-uploading the same
bytes under S3 versioning keeps the ETag and so the revision: it names content, not uploads.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

_COMMIT = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")  # a Hub commit, an OCI manifest digest
SHORT = 8  # hex digits of a revision in directory names (``models/<id>@<rev8>``)


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One file of a model at its source: path relative to the model dir, size, ETag, source key.

    ``checksum`` is what the origin vouches the bytes are (``agent.store.checksums``:
    ``sha256:<hex>``, ``crc64nvme:<hex>``, ...), checked before commit; ``version`` the origin's own
    revision of the object (S3 VersionId, Hugging Face commit), pinned by every ranged GET when given.
    """

    path: str
    size: int
    etag: str | None
    key: str
    ranges: bool = True  # False: the origin ignores Range; fetch it as one piece
    checksum: str | None = None
    version: str | None = None


def model_etag(files: Sequence[RemoteFile]) -> str | None:
    """One ETag for a model: the object's own for one file, else xxh3_64 over ``path\\0etag\\n`` lines."""
    if len(files) == 1:
        return files[0].etag
    h = xxhash.xxh3_64()
    for f in files:
        h.update(f"{f.path}\0{f.etag or ''}\n".encode())
    return h.hexdigest()


def revision_of(files: Sequence[RemoteFile]) -> str:
    """The model's revision: the commit sha all its files share, or a digest of their pins."""
    versions = {f.version for f in files}
    if len(versions) == 1 and (commit := versions.pop()) and _COMMIT.match(commit):
        return commit
    h = xxhash.xxh3_64()
    for f in sorted(files, key=lambda f: f.path):
        pin = (f.etag or "").strip('"') or f.checksum or f.version or ""
        h.update(f"{f.path}\0{f.size}\0{pin}\n".encode())
    return h.hexdigest()


def short(revision: str) -> str:
    """The revision as it appears in a directory name."""
    return "".join(c for c in revision.lower() if c in "0123456789abcdef")[:SHORT] or "0" * SHORT
