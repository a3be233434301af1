"""Model revisions: one string per model that pins what the origin says its content is.

``revision_of`` is pure. A Hugging Face model's revision is its commit sha (every file of it
carries that sha as its ``version``: 40 hex digits, which no S3 VersionId or HTTP date is); any
other model's is
16 hex digits of xxh3_64 over ``path\\0size\\0pin\\n`` lines of its files, where ``pin`` is the
ETag, else the origin checksum, else the version (HTTP Last-Modified) of each file. Re-uploading
the same bytes under S3 versioning keeps the ETag and so the revision: it names content, not
uploads. Two listings with the same revision are the same model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import xxhash

from agent.fetch.sources.base import RemoteFile, Source

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
SHORT = 8  # hex digits of a revision in directory names (``models/<id>@<rev8>``)


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


async def origin_revision(source: Source) -> str:
    """The revision the origin holds now: one listing (S3: plus a HEAD per object), no bytes."""
    return revision_of(await source.list_files())


async def origin_changed(source: Source, recorded: str | None) -> str | None:
    """The origin's new revision when it differs from ``recorded``, else None.

    A record from before revisions (``recorded`` None) counts as unchanged: without its pins
    there is nothing to compare, and refetching every old model at once would be a stampede.
    """
    now = await origin_revision(source)
    return now if recorded is not None and now != recorded else None
