"""Rows as ``kubectl get`` prints them: aligned tables (``-o wide`` adds columns), JSON and YAML.

Pure: the clock (``now``, for ages) is a parameter. Tables show human sizes (GiB, powers of
two, like ``kubectl top``); JSON and YAML carry exact bytes and every field.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import yaml

from fleetview.rows import DistributionRow, ModelRow, NodeRow
from locality.identity import ModelRef

NONE = "<none>"
UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
Column = tuple[str, Callable[[Any], str], bool]  # header, cell, wide only


def size(n: int | None) -> str:
    """1536 -> 1.5KiB, 10 GiB -> 10GiB (a decimal below 10 only); ``<none>`` when unknown."""
    if n is None:
        return NONE
    value, unit = float(n), 0
    while value >= 1024 and unit < len(UNITS) - 1:
        value, unit = value / 1024, unit + 1
    if unit == 0:
        return f"{n}B"
    return f"{value:.1f}{UNITS[unit]}" if value < 10 else f"{value:.0f}{UNITS[unit]}"


def percent(fraction: float | None) -> str:
    return NONE if fraction is None else f"{fraction * 100:.0f}%"


def age(created: str, now: dt.datetime) -> str:
    """kubectl's short age: 45s, 12m, 5h, 3d (``<unknown>`` for a missing or bad timestamp)."""
    try:
        then = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3 * 3600:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, header: bool = True) -> str:
    """Columns padded to their widest cell plus 3 spaces, as kubectl's tabwriter does."""
    lines = [list(headers)] if header else []
    lines += [list(r) for r in rows]
    if not lines:
        return ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    out = ["   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join(out) + "\n"


def _state_counts(row: NodeRow) -> str:
    return ",".join(f"{state}={n}" for state, n in sorted(row.states.items())) or NONE


def _node_status(row: NodeRow) -> str:
    status = "Ready" if row.ready else "NotReady"
    return status if row.schedulable else f"{status},SchedulingDisabled"


MODEL_COLUMNS: list[Column] = [
    ("MODEL", lambda r: r.uri or f"<label {r.label_key}>", False),
    ("NODE", lambda r: r.node, False),
    ("STATE", lambda r: r.state, False),
    ("SIZE", lambda r: size(r.bytes), False),
    ("PROGRESS", lambda r: percent(r.progress), False),
    ("REVISION", lambda r: (r.revision or NONE)[:12], False),
    ("ID", lambda r: r.model_id, True),
    ("LABELLED", lambda r: "yes" if r.labelled else "no", True),
    ("PINNED-BY", lambda r: ",".join(r.pinned_by) or NONE, True),
]
NODE_COLUMNS: list[Column] = [
    ("NODE", lambda r: r.node, False),
    ("STATUS", _node_status, False),
    ("MODELS", lambda r: str(sum(r.states.values())), False),
    ("READY", lambda r: str(r.states.get("ready", 0)), False),
    ("USED", lambda r: size(r.used_bytes), False),
    ("QUOTA", lambda r: size(r.quota_bytes), False),
    ("USE", lambda r: percent(r.use), False),
    ("PINNED", lambda r: str(r.pinned), False),
    ("FETCH-RATE", lambda r: NONE if r.fetch_rate is None else f"{size(r.fetch_rate)}/s", False),
    ("PINNED-SIZE", lambda r: size(r.pinned_bytes), True),
    ("STATES", _state_counts, True),
    ("PROBLEM", lambda r: r.problem or NONE, True),
]


def distribution_columns(now: dt.datetime) -> list[Column]:
    return [
        ("NAME", lambda r: r.name, False),
        ("MODEL", lambda r: r.uri, False),
        ("REPLICAS", lambda r: r.replicas, False),
        ("DESIRED", lambda r: NONE if r.desired is None else str(r.desired), False),
        ("READY", lambda r: NONE if r.ready is None else str(r.ready), False),
        ("STATUS", lambda r: r.condition, False),
        ("AGE", lambda r: age(r.created, now), False),
        ("ID", lambda r: r.model_id or NONE, True),
        ("TARGETS", lambda r: ",".join(r.targets) or NONE, True),
        ("MESSAGE", lambda r: r.message or NONE, True),
    ]


ID_COLUMNS: list[Column] = [
    ("URI", lambda r: r.uri, False),
    ("ID", lambda r: r.id, False),
    ("LABEL", lambda r: r.label_key, False),
    ("SLUG", lambda r: r.slug, True),
]


def tabulate(columns: Sequence[Column], rows: Sequence[Any], *, wide: bool, header: bool = True) -> str:
    chosen = [c for c in columns if wide or not c[2]]
    return table([c[0] for c in chosen], [cells(columns, r, wide=wide) for r in rows], header=header)


def cells(columns: Sequence[Column], row: Any, *, wide: bool) -> tuple[str, ...]:
    """One row's cells for the chosen columns (``--watch`` compares these, not padded lines)."""
    return tuple(c[1](row) for c in columns if wide or not c[2])


def as_dict(row: ModelRow | NodeRow | DistributionRow | ModelRef) -> dict[str, Any]:
    """Every field, exact (bytes as integers), plus the derived ones a table shows."""
    data = asdict(row)
    if isinstance(row, ModelRow):
        data["progress"] = row.progress
    if isinstance(row, NodeRow):
        data["states"] = dict(row.states)
        data["use"] = row.use
    return data


def document(kind: str, rows: Sequence[Any], fmt: str) -> str:
    """``{"kind": <kind>List, "items": [...]}`` as JSON (indented) or YAML."""
    doc: Mapping[str, Any] = {"kind": f"{kind}List", "items": [as_dict(r) for r in rows]}
    text = json.dumps(doc, indent=2) + "\n"
    if fmt == "json":
        return text
    return yaml.safe_dump(json.loads(text), sort_keys=False)  # via JSON: tuples become lists
