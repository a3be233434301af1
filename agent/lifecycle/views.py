"""The REST / ``ls --json`` view of a committed model (same object in both)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.lifecycle.modelstate import ModelState
from agent.lifecycle.states import Job
from agent.store.partials import Partial, Quarantined
from agent.store.shelf import Shelf
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


def cache_views(cache: Shelf) -> list[dict[str, Any]]:
    """What the cache holds, as REST objects: committed, then partial, then quarantined models."""
    views = [record_view(r, cache.model_path(r.id)) for r in cache.records()]
    views += [partial_view(p, cache.layout.stage(p.id)) for p in cache.partials()]
    views += [quarantined_view(q) for q in cache.quarantined()]
    return views


def states_of(records: Iterable[ModelRecord], jobs: Mapping[str, Job]) -> list[ModelState]:
    """What the Node should advertise: the current revision of each committed model, then every
    model in flight (its state and, while queued or fetching, the bytes done)."""
    states = {
        r.id: ModelState(
            id=r.id,
            uri=r.uri,
            label_key=r.label,
            state="ready",
            bytes=r.total_bytes,
            revision=r.revision,
        )
        for r in records
        if not r.superseded  # ready = the URI's current revision is ready
    }
    for mid, job in jobs.items():
        states[mid] = ModelState(
            id=mid,
            uri=job.ref.uri,
            label_key=job.ref.label_key,
            state=job.state,
            bytes=job.bytes_total or 0,
            bytes_done=job.bytes_done if job.state in ("queued", "fetching") else None,
        )
    return list(states.values())
