"""What the lifecycle reports and is told (pure): ``ModelState``, one model as the Node should
advertise it; ``Wanted``, the models this node should hold with their pin reasons; ``FetchRate``,
the fetch throughput this node has measured recently."""

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
    bytes_done: int | None = None  # in flight: bytes already on disk


# A fetch smaller or shorter than this measures latency, not bandwidth: not a rate sample.
MIN_RATE_BYTES = 256 * 2**20
MIN_RATE_SECONDS = 1.0


class FetchRate:
    """Bytes/s of recent completed fetches: an exponentially weighted mean (each new fetch half)."""

    def __init__(self, weight: float = 0.5) -> None:
        self.weight = weight
        self.value: float | None = None  # None until a fetch was measured

    def record(self, nbytes: int, seconds: float) -> None:
        if nbytes < MIN_RATE_BYTES or seconds < MIN_RATE_SECONDS:
            return
        rate = nbytes / seconds
        self.value = rate if self.value is None else self.weight * rate + (1 - self.weight) * self.value
