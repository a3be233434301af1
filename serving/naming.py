"""The names a served model answers to: after the model, not after its 16-hex cache directory."""

from __future__ import annotations

import json
import re
from pathlib import Path

from locality.records import Layout, load_record

_CACHE_ID = re.compile(r"^[0-9a-f]{16}$")


def last_segment(text: str) -> str:
    """``s3://models/org/all-MiniLM-L6-v2/`` -> ``all-MiniLM-L6-v2`` (a query string is dropped)."""
    return text.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def default_name(model_dir: str | None, model_uri: str | None) -> str:
    """The URI's last segment; for a directory: the URI of the agent's record when the directory
    is a cache entry (``<root>/models/<id>``), else ``config.json``'s ``_name_or_path``, else the
    directory's own name."""
    if model_uri:
        return last_segment(model_uri) or "model"
    if not model_dir:
        return "model"
    path = Path(model_dir)
    return _from_record(path) or _from_config(path) or last_segment(str(path)) or "model"


def parse_names(text: str) -> tuple[str, ...]:
    """``--served-model-name a,b, c`` -> ``("a", "b", "c")``: the first is the primary name."""
    return tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))


def _from_record(path: Path) -> str | None:
    """The URI's last segment from the agent's record of the cache entry ``path``, if it is one."""
    if path.parent.name != "models":
        return None
    layout = Layout(path.parent.parent)
    record = load_record(layout, path.name) if _CACHE_ID.match(path.name) else None
    if record is None:  # a directory named otherwise (``dir`` in the record): find its record
        for candidate in sorted(layout.records.glob("*.json"))[:10_000]:
            found = load_record(layout, candidate.stem)
            if found is not None and found.dir_name == path.name:
                record = found
                break
    return (last_segment(record.uri) or None) if record is not None else None


def _from_config(path: Path) -> str | None:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = config.get("_name_or_path") if isinstance(config, dict) else None
    return last_segment(name) or None if isinstance(name, str) else None
