"""The node cache's on-disk contract, read by the agent and by serving: layout and model records.

Layout under the cache root::

    models/<id>/...        committed models, files exactly as at the source, nothing else
    models/<id>@<rev8>/    a later revision of the same URI (the record's ``dir``)
    records/<id>.json      one metadata record per committed model (tmp + fsync + rename): the
                           URI's current revision; its ``dir`` names its directory
    records/<id>@<rev8>.json  a superseded revision, kept while a pod pins it (then evictable)
    records/<id>.pins.json pins given before the model was committed (merged at commit)
    staging/<id>/          a fetch in progress: files/ (renamed to models/<id>), manifest, journal
    trash/                 models being deleted (renamed here first, so removal is atomic)
    records/<id>.wanted.json  a fetch accepted over REST, resumed after a restart until committed
    quarantine/<id>/       a model whose record could not be parsed, kept (``<id>.json`` beside)
    .lock, agent.sock      the owner lock (a daemon holds it) and the daemon's local API socket

Only the agent writes here (``agent.store.durable``); serving only reads a record to check its model
(``locality.recordcheck``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locality.digests import DIGEST_SCHEME

log = logging.getLogger(__name__)

# A record's key: a model id (the URI's current revision) or ``<id>@<rev8>[.<n>]`` (a superseded one).
RECORD_KEY = re.compile(r"^[0-9a-f]{16}(@[0-9a-f]{8}(\.[0-9]+)?)?$")


def base_id(key: str) -> str:
    """The model id of a record key (``<id>@<rev8>`` -> ``<id>``)."""
    return key.split("@", 1)[0]


@dataclass(frozen=True)
class FileRecord:
    """One committed file: path relative to the model dir, size, digests, source ETag."""

    path: str
    size: int
    xxh3_128: str
    chunk_bytes: int
    chunk_digests: tuple[str, ...]
    etag: str | None
    mtime_ns: int | None = None  # st_mtime_ns at commit: a cheap "changed since?" check
    # The origin's checksum the bytes were checked against before commit (``sha256:<hex>``,
    # ``crc64nvme:<hex>``, ...), or ``none`` when the origin gave none we can check.
    origin_checksum: str = "none"
    version: str | None = None  # the origin's object version (S3 VersionId, HTTP Last-Modified)


@dataclass(frozen=True)
class ModelRecord:
    """The metadata record of one committed model."""

    id: str
    uri: str
    label: str
    files: tuple[FileRecord, ...]
    total_bytes: int
    etag: str | None
    fetched_at: float
    last_used: float
    pins: frozenset[str]
    revision: str | None = None  # what the origin says the content is (older records: None)
    dir: str | None = None  # its directory under models/ (None: the record's id)

    @property
    def dir_name(self) -> str:
        return self.dir or self.id

    @property
    def superseded(self) -> bool:
        """A former revision of its URI (key ``<id>@<rev8>``), kept only while pinned."""
        return "@" in self.id

    @property
    def model_id(self) -> str:
        return base_id(self.id)


@dataclass(frozen=True)
class Layout:
    """Paths under one cache root."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def records(self) -> Path:
        return self.root / "records"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def trash(self) -> Path:
        return self.root / "trash"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    def wanted(self, model_id: str) -> Path:
        return self.records / f"{model_id}.wanted.json"

    def model(self, model_id: str) -> Path:
        return self.models / model_id

    def record(self, model_id: str) -> Path:
        return self.records / f"{model_id}.json"

    def pending_pins(self, model_id: str) -> Path:
        return self.records / f"{model_id}.pins.json"

    def stage(self, model_id: str) -> Path:
        return self.staging / model_id

    def create(self) -> Layout:
        for path in (self.models, self.records, self.staging, self.trash):
            path.mkdir(parents=True, exist_ok=True)
        return self


def record_to_json(record: ModelRecord) -> dict[str, Any]:
    return {
        "version": 1,
        "digest_scheme": DIGEST_SCHEME,
        "id": record.id,
        "uri": record.uri,
        "label": record.label,
        "total_bytes": record.total_bytes,
        "etag": record.etag,
        "fetched_at": record.fetched_at,
        "last_used": record.last_used,
        "pins": sorted(record.pins),
        "revision": record.revision,
        **({"dir": record.dir} if record.dir else {}),
        "files": [
            {
                "path": f.path,
                "size": f.size,
                "xxh3_128": f.xxh3_128,
                "chunk_bytes": f.chunk_bytes,
                "chunk_digests": list(f.chunk_digests),
                "etag": f.etag,
                **({"mtime_ns": f.mtime_ns} if f.mtime_ns is not None else {}),
                "origin_checksum": f.origin_checksum,
                "version": f.version,
            }
            for f in record.files
        ],
    }


def record_from_json(data: dict[str, Any]) -> ModelRecord:
    """Parse a record; raise ``ValueError`` (or ``KeyError``/``TypeError``) when it is not one."""
    if data.get("digest_scheme") != DIGEST_SCHEME:
        raise ValueError(f"unknown digest scheme {data.get('digest_scheme')!r}")
    files = tuple(
        FileRecord(
            path=str(f["path"]),
            size=int(f["size"]),
            xxh3_128=str(f["xxh3_128"]),
            chunk_bytes=int(f["chunk_bytes"]),
            chunk_digests=tuple(str(d) for d in f["chunk_digests"]),
            etag=f.get("etag"),
            mtime_ns=int(f["mtime_ns"]) if f.get("mtime_ns") is not None else None,
            origin_checksum=str(f.get("origin_checksum") or "none"),
            version=f.get("version"),
        )
        for f in data["files"]
    )
    return ModelRecord(
        id=str(data["id"]),
        uri=str(data["uri"]),
        label=str(data["label"]),
        files=files,
        total_bytes=int(data["total_bytes"]),
        etag=data.get("etag"),
        fetched_at=float(data["fetched_at"]),
        last_used=float(data["last_used"]),
        pins=frozenset(str(p) for p in data.get("pins", [])),
        revision=data.get("revision"),
        dir=_dir_of(data.get("dir")),
    )


def _dir_of(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not RECORD_KEY.match(value):
        raise ValueError(f"record names an unusable directory {str(value)[:40]!r}")
    return value


def load_record(layout: Layout, model_id: str) -> ModelRecord | None:
    """The record of ``model_id``, or None when absent or unreadable (logged)."""
    path = layout.record(model_id)
    try:
        record = record_from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable record %s: %s", path, exc)
        return None
    return record if record.id == model_id else None


def record_for_dir(layout: Layout, name: str) -> ModelRecord | None:
    """The record whose directory is ``models/<name>`` (current or superseded revision), or None."""
    if not RECORD_KEY.match(name):
        return None
    record = load_record(layout, name)
    if record is not None and record.dir_name == name:
        return record
    for path in sorted(layout.records.glob(f"{base_id(name)}*.json")):
        key = path.name.removesuffix(".json")
        if RECORD_KEY.match(key) and (other := load_record(layout, key)) and other.dir_name == name:
            return other
    return None


def record_at(model_dir: Path) -> ModelRecord | None:
    """The record of a committed ``<root>/models/<dir>`` found by its path; None when the
    directory is not in a node cache (or has no readable record)."""
    model_dir = Path(model_dir).resolve()
    if model_dir.parent.name != "models":
        return None
    return record_for_dir(Layout(model_dir.parent.parent), model_dir.name)
