"""The revision fields of ``POST /v1/models``: ``refresh`` (bool) and ``revision`` (string)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from locality import errors

REVISION_FIELDS = ("refresh", "revision")
_REVISION = re.compile(r"^[0-9A-Za-z._-]{1,128}$")


def revision_fields(body: Mapping[str, object]) -> tuple[bool, str | None]:
    """``(refresh, revision)`` of a request body; ``Invalid`` when either is malformed."""
    refresh = body.get("refresh", False)
    if not isinstance(refresh, bool):
        raise errors.Invalid("refresh must be true or false")
    revision = body.get("revision")
    if revision is None:
        return refresh, None
    if not isinstance(revision, str) or not _REVISION.match(revision):
        raise errors.Invalid("revision must be 1-128 characters of [0-9A-Za-z._-] (e.g. a commit sha)")
    return refresh, revision
