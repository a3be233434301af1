"""What a cache root holds besides committed models: partial fetches in ``staging/``, quarantined
models, and the fetches accepted over REST that a restart must resume. Disk reads and renames only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.store.durable import fsync_dir, write_json_atomic
from agent.store.trash import to_trash
from locality.identity import InvalidURI, ModelRef, model_ref
from locality.records import Layout

log = logging.getLogger(__name__)
ID = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class Partial:
    """An interrupted (or running) fetch: bytes journaled of the listing's total, bytes allocated."""

    id: str
    uri: str
    bytes_done: int
    bytes_total: int
    allocated: int
    mtime: float


@dataclass(frozen=True)
class Quarantined:
    """A model set aside because its record could not be parsed; ``key`` is its dir name."""

    key: str
    id: str
    reason: str
    bytes: int
    path: Path


def allocated_bytes(root: Path) -> int:
    """Bytes allocated on disk to the files below ``root`` (sparse holes do not count)."""
    if not root.exists():
        return 0
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def read_partial(layout: Layout, model_id: str) -> Partial | None:
    """The staged fetch of ``model_id``, from its manifest and journal; None without a manifest."""
    stage = layout.stage(model_id)
    try:
        manifest = json.loads((stage / "manifest.json").read_text())
        files = {str(p): int(v[0]) for p, v in manifest["files"].items()}
        chunk = int(manifest["chunk_bytes"])
        uri = str(manifest["uri"])
        mtime = (stage / "manifest.json").stat().st_mtime
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None
    done: set[tuple[str, int]] = set()
    try:
        lines = (stage / "journal").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            path, index, _ = json.loads(line)
            done.add((str(path), int(index)))
        except (ValueError, TypeError):
            continue  # a torn last line
    bytes_done = sum(
        max(0, min(chunk, files[p] - i * chunk)) for p, i in done if p in files and i * chunk < files[p]
    )
    total = sum(files.values())
    return Partial(model_id, uri, bytes_done, total, allocated_bytes(stage / "files"), mtime)


def partials(layout: Layout) -> dict[str, Partial]:
    found: dict[str, Partial] = {}
    if not layout.staging.is_dir():
        return found
    for path in layout.staging.iterdir():
        if path.is_dir() and ID.match(path.name) and (p := read_partial(layout, path.name)) is not None:
            found[p.id] = p
    return found


def quarantine(layout: Layout, model_id: str, reason: str) -> None:
    """Move ``models/<id>`` and its unreadable record aside, under ``quarantine/``; destroy nothing."""
    layout.quarantine.mkdir(exist_ok=True)
    key = model_id
    while (layout.quarantine / key).exists() or (layout.quarantine / f"{key}.json").exists():
        key = f"{model_id}.{uuid.uuid4().hex[:6]}"
    target = layout.quarantine / key
    if layout.model(model_id).is_dir():
        os.rename(layout.model(model_id), target)
    else:
        target.mkdir()
    (layout.quarantine / f"{key}.reason").write_text(reason[:1000] + "\n")
    if layout.record(model_id).exists():
        os.rename(layout.record(model_id), layout.quarantine / f"{key}.json")
    fsync_dir(layout.quarantine)
    fsync_dir(layout.records)
    log.error("quarantined model %s (%s): %s", model_id, target, reason)


def quarantined(layout: Layout) -> dict[str, Quarantined]:
    found: dict[str, Quarantined] = {}
    if not layout.quarantine.is_dir():
        return found
    for path in sorted(layout.quarantine.iterdir()):
        if not path.is_dir():
            continue
        try:
            reason = (layout.quarantine / f"{path.name}.reason").read_text().strip()
        except OSError:
            reason = "unreadable record"
        found[path.name] = Quarantined(
            path.name, path.name.split(".")[0], reason, allocated_bytes(path), path
        )
    return found


def free_quarantined(layout: Layout, key: str) -> Path | None:
    """Move a quarantined entry into trash (the caller deletes it); None when there is no such entry."""
    path = layout.quarantine / key
    if not path.is_dir():
        return None
    trash = to_trash(layout, path, f"q-{key}")
    for suffix in (".json", ".reason"):
        (layout.quarantine / f"{key}{suffix}").unlink(missing_ok=True)
    fsync_dir(layout.quarantine)
    return trash


def want(layout: Layout, ref: ModelRef) -> None:
    write_json_atomic(layout.wanted(ref.id), {"uri": ref.uri})


def unwant(layout: Layout, model_id: str) -> None:
    layout.wanted(model_id).unlink(missing_ok=True)


def wanted(layout: Layout) -> list[ModelRef]:
    """Fetches accepted over REST and not committed yet (``records/<id>.wanted.json``)."""
    refs: list[ModelRef] = []
    if not layout.records.is_dir():
        return refs
    for path in sorted(layout.records.glob("*.wanted.json")):
        try:
            data: Any = json.loads(path.read_text())
            ref = model_ref(str(data["uri"]))
        except (OSError, ValueError, KeyError, TypeError, InvalidURI) as exc:
            log.warning("ignoring %s: %s", path, exc)
            continue
        if ref.id == path.name.split(".")[0]:
            refs.append(ref)
    return refs
