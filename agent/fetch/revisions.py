"""What the origin holds now: one listing names its revision (``agent.store.files.revision_of``)."""

from __future__ import annotations

from agent.fetch.sources.base import Source
from agent.store.files import revision_of


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
