"""Eviction planning: which committed models to delete so that the cache stays within its quota.

Pure: the caller passes the models, the bytes in use, the quota, the free disk space and the
bytes it is about to write; nothing here touches the disk or a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from locality.units import human_size


@dataclass(frozen=True, slots=True)
class Candidate:
    """A committed model as eviction sees it."""

    id: str
    bytes: int
    last_used: float
    pinned: bool


@dataclass(frozen=True, slots=True)
class Plan:
    """What to evict (in order), and whether the incoming bytes fit afterwards."""

    evict: tuple[str, ...]
    fits: bool
    reason: str = ""


def plan_eviction(
    models: Sequence[Candidate],
    *,
    used: int,
    quota: int,
    high: float,
    low: float,
    incoming: int = 0,
    free: int | None = None,
) -> Plan:
    """Pick least-recently-used unpinned models to evict.

    Eviction starts when ``used + incoming > high * quota`` (the high watermark) or when the disk
    lacks room (``incoming > free``). It then frees at least

        release = max(used + incoming - low * quota  (only when over the high watermark),
                      incoming - free                 (only when free is known))

    taking unpinned models by ``last_used`` ascending (ties: id). The result fits when
    ``used - freed + incoming <= quota`` and ``free + freed >= incoming``. When it cannot fit even
    after every unpinned model is gone, nothing is evicted (deleting would not help) and
    ``fits`` is False with a reason naming the pinned bytes (with ``incoming == 0``, a gc, the
    unpinned models are still evicted: getting closer to the quota helps).
    """
    over_high = used + incoming > high * quota
    short = free is not None and incoming > free
    if not over_high and not short:
        return Plan(evict=(), fits=True)
    release = max(
        used + incoming - int(low * quota) if over_high else 0,
        incoming - free if free is not None else 0,
    )
    evict: list[str] = []
    freed = 0
    for model in sorted((m for m in models if not m.pinned), key=lambda m: (m.last_used, m.id)):
        if freed >= release:
            break
        evict.append(model.id)
        freed += model.bytes
    fits = used - freed + incoming <= quota and (free is None or free + freed >= incoming)
    if fits:
        return Plan(evict=tuple(evict), fits=True)
    if incoming == 0:  # gc of an over-full cache: getting closer to the quota still helps
        over = human_size(used - freed)
        return Plan(evict=tuple(evict), fits=False, reason=f"{over} still in use, over the quota")
    pinned = sum(m.bytes for m in models if m.pinned)
    reason = (
        f"need {human_size(incoming)}: {human_size(used)} in use of a {human_size(quota)} quota"
        + (f", {human_size(free)} free on disk" if free is not None else "")
        + f", and {human_size(pinned)} of it pinned"
    )
    return Plan(evict=(), fits=False, reason=reason)
