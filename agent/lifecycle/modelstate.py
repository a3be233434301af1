"""``ModelState``: one model as the manager reports it and the Node should advertise it (pure)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelState:
    """One model as the Node should advertise it."""

    id: str
    uri: str
    label_key: str
    state: str
    bytes: int = 0  # total bytes, 0 while unknown
    revision: str | None = None  # the committed revision (ready models)
