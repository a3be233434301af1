"""The REST / ``ls --json`` view of a committed model (same object in both)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.store.partials import Partial, Quarantined
from locality.contract import READY
from locality.identity import redact_text, redact_uri
from locality.records import ModelRecord


def public(view: dict[str, Any]) -> dict[str, Any]:
    """A view as the REST answers it (unauthenticated GETs): the URI's credentials and signed
    query values, and any URI in the error or the refresh's error, redacted."""
    out = dict(view)
    if out.get("uri") is not None:
        out["uri"] = redact_uri(out["uri"])
    for field in ("error", "refresh"):
        if out.get(field) is not None:
            out[field] = redact_text(out[field])
    return out


def record_view(record: ModelRecord, path: Path) -> dict[str, Any]:
    """The REST / ``ls --json`` object of a committed model."""
    return {
        "id": record.id,
        "uri": record.uri,
        "label": record.label,
        "state": "superseded" if record.superseded else READY,
        "bytes_total": record.total_bytes,
        "bytes_done": record.total_bytes,
        "path": str(path),
        "error": None,
        "pins": sorted(record.pins),
        "fetched_at": record.fetched_at,
        "last_used": record.last_used,
        "revision": record.revision,
        "origin_checksums": {f.path: f.origin_checksum for f in record.files},
    }


def partial_view(partial: Partial, path: Path) -> dict[str, Any]:
    """A fetch staged but not committed (interrupted, or resumed after a restart)."""
    return {
        "id": partial.id,
        "uri": partial.uri,
        "label": None,
        "state": "partial",
        "bytes_total": partial.bytes_total,
        "bytes_done": partial.bytes_done,
        "path": str(path),
        "error": None,
    }


def quarantined_view(entry: Quarantined) -> dict[str, Any]:
    """A model set aside because its record could not be parsed (``rm ID`` frees it)."""
    return {
        "id": entry.id,
        "uri": None,
        "label": None,
        "state": "quarantined",
        "bytes_total": entry.bytes,
        "bytes_done": entry.bytes,
        "path": str(entry.path),
        "error": entry.reason,
    }
