"""Output people read: the ``model-agent ls`` table (pure; ``--json`` keeps bytes).

One function renders the table from REST views, so any state (``ready``, ``partial``,
``quarantined``, ``fetching``, ...) passes through the same columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from locality.units import human_size

HEADER = ("ID", "STATE", "SIZE", "REVISION", "PINS", "URI")
REVISION_CHARS = 12  # enough to tell revisions apart; ``ls --json`` and the REST keep the whole string


def size_cell(view: Mapping[str, Any]) -> str:
    """The SIZE column: the total once ready; ``done / total`` while bytes are still missing."""
    done, total = view.get("bytes_done"), view.get("bytes_total")
    if view.get("state") in ("ready", "quarantined") or done is None or done == total:
        return human_size(total if total is not None else done)
    return f"{human_size(done)} / {human_size(total)}"


def revision_cell(view: Mapping[str, Any]) -> str:
    """The REVISION column: the first 12 characters of the revision, ``-`` when there is none yet."""
    revision = view.get("revision")
    return str(revision)[:REVISION_CHARS] if revision else "-"


def ls_row(view: Mapping[str, Any]) -> tuple[str, ...]:
    pins = ",".join(view.get("pins") or []) or "-"
    where = view.get("uri") or view.get("error") or ""
    state = str(view.get("state") or "-")
    return (str(view.get("id", "")), state, size_cell(view), revision_cell(view), pins, str(where))


def ls_table(views: Sequence[Mapping[str, Any]]) -> str:
    """The ``ls`` table: a header, then one aligned row per model (URI last, never cut)."""
    rows: list[tuple[str, ...]] = [HEADER, *(ls_row(v) for v in views)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER) - 1)]
    lines = []
    for row in rows:
        head = zip(row[:-1], widths, strict=True)
        cells = [cell.rjust(w) if i == 2 else cell.ljust(w) for i, (cell, w) in enumerate(head)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def usage_line(evicted: int, used: int, quota: int) -> str:
    """``gc``'s summary: ``2 evicted; 3.1 GiB of 10.0 GiB in use (31%)``."""
    share = f" ({100 * used / quota:.0f}%)" if quota > 0 else ""
    return f"{evicted} evicted; {human_size(used)} of {human_size(quota)} in use{share}"
