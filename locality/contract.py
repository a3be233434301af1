"""The node/pod contract as data: annotation keys, model states and the annotation JSON shapes.

Who writes what: each node's agent writes, on its own Node, one label ``<label key>: "ready"`` per
committed model (``identity.is_model_label`` recognises them), the annotation ``MODELS_ANNOTATION``
= ``{"<id>": {"uri", "bytes", "state"}}`` and ``CACHE_ANNOTATION`` = ``{"used_bytes",
"quota_bytes"}``. A serving pod says ``MODELS_ANNOTATION`` = comma-separated URIs and
``LOCALITY_ANNOTATION`` = ``preferred`` | ``required``. Parsing is defensive and pure: junk in an
annotation becomes "nothing" plus a ``problem`` line, never an exception.

Time to ready (docs/time-to-ready.md): an entry in flight may carry ``bytes_done`` (bytes of it
already on the node), and ``FETCH_RATE_ANNOTATION`` = the node's measured fetch throughput in
bytes/s as a decimal integer. Both are written only on a material change (``rate_changed``,
``progress_changed``), so a fetch costs the API server a handful of Node writes, not one per chunk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from locality.identity import DOMAIN, InvalidURI, ModelRef, model_ref

MODELS_ANNOTATION = f"{DOMAIN}/models"
LOCALITY_ANNOTATION = f"{DOMAIN}/locality"
CACHE_ANNOTATION = f"{DOMAIN}/cache"
FETCH_RATE_ANNOTATION = f"{DOMAIN}/fetch-rate"
IN_FLIGHT_STATES = ("queued", "fetching")
READY = "ready"
# Every state a model can have in the models annotation and in the agent's REST.
MODEL_STATES = ("queued", "fetching", "ready", "failed", "evicting")
MAX_MODELS_PER_POD = 64  # more is surely garbage; the rest is ignored (and reported)


def mapping(value: object) -> Mapping[str, Any]:
    """``value`` when it is a JSON object (a Mapping), else an empty one: for walking API objects."""
    return value if isinstance(value, Mapping) else {}


def str_map(value: object) -> dict[str, str]:
    """A Kubernetes string map (labels, annotations): ``{}`` when missing or not a map."""
    return {str(k): str(v) for k, v in mapping(value).items()}


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One entry of a node's models annotation; ``bytes`` is None while unknown or invalid."""

    uri: str
    bytes: int | None
    state: str
    revision: str | None = None  # what the origin said the committed content is (agent.fetch.revisions)
    bytes_done: int | None = None  # in flight: bytes already on the node (None: not reported)

    def as_json(self) -> dict[str, object]:
        entry: dict[str, object] = {"uri": self.uri, "bytes": max(0, self.bytes or 0), "state": self.state}
        if self.revision:
            entry["revision"] = self.revision
        if self.bytes_done is not None and self.state in IN_FLIGHT_STATES:
            entry["bytes_done"] = max(0, self.bytes_done)
        return entry


def parse_models_annotation(raw: object) -> tuple[dict[str, ModelEntry], str | None]:
    """Parse the models annotation; ``({}, problem)`` when it is not the documented JSON.

    Entries that are individually malformed are skipped (the rest still count), and the first
    such defect is reported.
    """
    if raw is None:
        return {}, None
    if not isinstance(raw, str):
        return {}, f"{MODELS_ANNOTATION} is not a string"
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return {}, f"{MODELS_ANNOTATION} is not JSON: {exc}"
    if not isinstance(data, dict):
        return {}, f"{MODELS_ANNOTATION} is not a JSON object"
    models: dict[str, ModelEntry] = {}
    problem: str | None = None
    for mid, entry in data.items():
        parsed = _model_entry(entry)
        if parsed is None:
            problem = problem or f"{MODELS_ANNOTATION} entry {mid!r} is malformed"
            continue
        models[mid] = parsed
    return models, problem


def _model_entry(entry: object) -> ModelEntry | None:
    if not isinstance(entry, dict):
        return None
    size = entry.get("bytes")
    state = entry.get("state")
    uri = entry.get("uri", "")
    if not isinstance(state, str) or state not in MODEL_STATES or not isinstance(uri, str):
        return None
    valid_size = isinstance(size, int) and not isinstance(size, bool) and size >= 0
    revision = entry.get("revision")
    return ModelEntry(
        uri=uri,
        bytes=size if valid_size else None,
        state=state,
        revision=revision if isinstance(revision, str) else None,
        bytes_done=_bytes_done(entry.get("bytes_done"), size if valid_size else None, state),
    )


def _bytes_done(done: object, size: int | None, state: str) -> int | None:
    """``bytes_done`` of an in-flight entry, clamped to its size; None when absent, junk or not
    in flight (a ready model is whole, a failed one counts as nothing)."""
    if state not in IN_FLIGHT_STATES or isinstance(done, bool) or not isinstance(done, int) or done < 0:
        return None
    return min(done, size) if size is not None else done


def parse_fetch_rate(raw: object) -> tuple[int | None, str | None]:
    """The fetch-rate annotation (bytes/s, a decimal integer > 0); ``(None, problem)`` when bad,
    ``(None, None)`` when absent."""
    if raw is None:
        return None, None
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 15 and int(raw) > 0:
        return int(raw), None
    return None, f"{FETCH_RATE_ANNOTATION} is not a positive integer (bytes per second)"


def format_fetch_rate(bytes_per_second: float) -> str:
    """The annotation value: the rate rounded to 2 significant digits (734_003_200 -> "730000000"),
    so noise below a few percent never changes the text."""
    rate = max(1, round(bytes_per_second))
    digits = len(str(rate))
    return str(round(rate, 2 - digits) if digits > 2 else rate)


def rate_changed(written: int | None, measured: float, ratio: float = 0.25) -> bool:
    """True when ``measured`` is worth a Node write: nothing written yet, or off by more than
    ``ratio`` (25%: the score's resolution is coarser than that) from what was written."""
    if measured <= 0:
        return False
    if written is None or written <= 0:
        return True
    return abs(measured - written) > ratio * written


def progress_changed(written: int | None, done: int, total: int | None, step: float = 0.1) -> bool:
    """True when ``done`` moved at least ``step`` (10%) of ``total`` past the written value
    (at most ~10 progress writes per fetch); an unknown total never counts as material."""
    if total is None or total <= 0:
        return False
    return done - (written or 0) >= step * total


@dataclass(frozen=True, slots=True)
class CacheUsage:
    """The cache annotation: bytes used and the quota."""

    used_bytes: int
    quota_bytes: int

    @property
    def free_bytes(self) -> int:
        return max(0, self.quota_bytes - self.used_bytes)

    def as_json(self) -> dict[str, int]:
        return {"used_bytes": max(0, self.used_bytes), "quota_bytes": max(0, self.quota_bytes)}


def parse_cache_annotation(raw: object) -> tuple[CacheUsage | None, str | None]:
    """The cache annotation; ``(None, problem)`` when it is bad, ``(None, None)`` when absent."""
    if raw is None:
        return None, None
    try:
        data = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return None, f"{CACHE_ANNOTATION} is not a JSON object"
    used, quota = data.get("used_bytes"), data.get("quota_bytes")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (used, quota)):
        return None, f"{CACHE_ANNOTATION} needs non-negative integer used_bytes and quota_bytes"
    return CacheUsage(used, quota), None  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class PodModels:
    """The models a pod asked for, normalised, plus what could not be understood."""

    refs: tuple[ModelRef, ...] = ()
    required: bool = False
    invalid: tuple[str, ...] = ()  # one message per URI that failed normalisation
    problem: str | None = None  # first thing worth a log line


NO_MODELS = PodModels()


def pod_models(annotations: Mapping[str, object] | None) -> PodModels:
    """Read a pod's annotations (any junk allowed) into ``PodModels``."""
    if not annotations:
        return NO_MODELS
    models = annotations.get(MODELS_ANNOTATION)
    locality = annotations.get(LOCALITY_ANNOTATION)
    if models is None:
        return NO_MODELS
    if not isinstance(models, str):
        return PodModels(problem=f"{MODELS_ANNOTATION} is not a string")
    return _parse(models, locality if isinstance(locality, str) else None)


@lru_cache(maxsize=4096)
def _parse(models: str, locality: str | None) -> PodModels:
    """Cached: replicas of one Deployment send the same annotation strings over and over."""
    mode = (locality or "preferred").strip().lower()
    problem = None
    if mode not in ("preferred", "required"):
        problem = f"{LOCALITY_ANNOTATION}={locality!r} is neither preferred nor required; using preferred"
    refs: dict[str, ModelRef] = {}
    invalid: list[str] = []
    items = [u.strip() for u in models.split(",") if u.strip()]
    for uri in items[:MAX_MODELS_PER_POD]:
        try:
            ref = model_ref(uri)
        except InvalidURI as exc:
            invalid.append(f"invalid model URI {uri[:200]!r}: {exc}")
            continue
        refs.setdefault(ref.id, ref)
    if len(items) > MAX_MODELS_PER_POD:
        invalid.append(f"more than {MAX_MODELS_PER_POD} models requested; the rest are ignored")
    if invalid and problem is None:
        problem = invalid[0]
    return PodModels(tuple(refs.values()), mode == "required", tuple(invalid), problem)
