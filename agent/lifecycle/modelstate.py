"""What the lifecycle reports and is told (pure): ``ModelState``, one model as the Node should
advertise it; ``Wanted``, the models this node should hold with their pin reasons."""

from __future__ import annotations

from dataclasses import dataclass

from locality.identity import ModelRef

Wanted = dict[str, tuple[ModelRef, frozenset[str]]]  # model id -> (ref, pin reasons)


@dataclass(frozen=True, slots=True)
class ModelState:
    """One model as the Node should advertise it."""

    id: str
    uri: str
    label_key: str
    state: str
    bytes: int = 0  # total bytes, 0 while unknown
    revision: str | None = None  # the committed revision (ready models)
