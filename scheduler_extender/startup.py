"""Time to ready of injected pods: from binding to the wait init container's end and to Ready.

Fed by a pod watch selected on the webhook's label (``model-locality.io/agent-client=true``, so the
API server sends only our pods). When a pod is first seen bound, its kind of start is read from
the node's model state at that moment: ``warm`` (every model ready there), ``fetching`` (none
missing outright, one in flight) or ``cold``. One sample per pod and model is recorded for
phase ``wait`` (binding -> the last ``model-locality-wait*`` init container terminated with exit
code 0) and phase ``ready`` (binding -> the Ready condition). A pod that restarts a container,
fails, is deleted, or is not Ready within ``timeout`` before it was Ready is counted apart with
that reason, never as a start. A pod first seen bound more than ``LATE_SECONDS`` after its
binding (the extender restarted, or the watch was down) is not classified: its node state at
binding time is unknown. Timestamps are the API server's (whole seconds).
"""

from __future__ import annotations

import statistics
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from locality.contract import IN_FLIGHT_STATES, mapping, pod_models
from locality.timestamps import parse_rfc3339 as parse_time
from scheduler_extender.injection import CLIENT_LABEL, WAIT_CONTAINER
from scheduler_extender.nodes import NodeState

POD_SELECTOR = f"{CLIENT_LABEL}=true"
KINDS = ("warm", "fetching", "cold")
PHASES = ("wait", "ready")
REASONS = ("restarted", "failed", "deleted", "not_ready")
LATE_SECONDS = 30.0
WINDOW = 1024  # samples kept per (model, kind, phase) for the REST summary's quantiles
MIN_SAMPLES = 3  # fewer measured cold starts than this: sizing uses its stated default
DONE_LIMIT = 100_000


class Recorder(Protocol):
    """Where samples and abandoned starts go (the Prometheus metrics)."""

    def observe(self, model: str, kind: str, phase: str, seconds: float) -> None: ...

    def abandoned(self, model: str, kind: str, reason: str) -> None: ...


def kind_of_start(model_ids: tuple[str, ...], label_keys: tuple[str, ...], node: NodeState | None) -> str:
    """The worst of the pod's models on the node: cold > fetching > warm (no node known: cold)."""
    if node is None:
        return "cold"
    kinds = set()
    for mid, label in zip(model_ids, label_keys, strict=True):
        entry = node.models.get(mid)
        if label in node.ready_labels:
            kinds.add("warm")
        elif entry is not None and entry.state in IN_FLIGHT_STATES:
            kinds.add("fetching")
        else:
            kinds.add("cold")
    return next((k for k in reversed(KINDS) if k in kinds), "warm")


@dataclass(frozen=True, slots=True)
class PodTimes:
    """What the tracker reads from one pod object."""

    uid: str
    node: str
    models: tuple[str, ...]
    labels: tuple[str, ...]
    bound_at: float | None
    ready_at: float | None
    wait_done_at: float | None
    restarts: int
    phase: str
    deleting: bool


def pod_times(pod: Mapping[str, Any]) -> PodTimes:
    """Parse the fields the tracker needs; never raises on content."""
    meta, spec, status = (mapping(pod.get(k)) for k in ("metadata", "spec", "status"))
    annotations = mapping(meta.get("annotations"))
    refs = pod_models(annotations).refs
    conditions = {c.get("type"): c for c in _dicts(status.get("conditions")) if c.get("status") == "True"}
    init = _dicts(status.get("initContainerStatuses"))
    main = _dicts(status.get("containerStatuses"))
    restarts = sum(n for s in [*init, *main] if isinstance(n := s.get("restartCount"), int))
    return PodTimes(
        uid=str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"),
        node=str(spec.get("nodeName") or ""),
        models=tuple(r.id for r in refs),
        labels=tuple(r.label_key for r in refs),
        bound_at=parse_time(mapping(conditions.get("PodScheduled")).get("lastTransitionTime")),
        ready_at=parse_time(mapping(conditions.get("Ready")).get("lastTransitionTime")),
        wait_done_at=_wait_done(init),
        restarts=restarts,
        phase=str(status.get("phase") or ""),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def _dicts(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _wait_done(init: list[dict[str, Any]]) -> float | None:
    """When the last wait container ended with exit code 0; None while any has not."""
    waits = [s for s in init if str(s.get("name", "")).startswith(WAIT_CONTAINER)]
    ends = []
    for status in waits:
        terminated = mapping(mapping(status.get("state")).get("terminated"))
        if terminated.get("exitCode") != 0:
            return None
        ends.append(parse_time(terminated.get("finishedAt")))
    if not ends or any(e is None for e in ends):
        return None
    return max(e for e in ends if e is not None)


@dataclass(slots=True)
class Track:
    """A pod bound while we watched, not Ready yet."""

    models: tuple[str, ...]
    kind: str
    bound_at: float
    seen_at: float
    wait_recorded: bool = False


@dataclass
class Samples:
    """Recent samples per (model, kind, phase) and counts of everything recorded."""

    recent: dict[tuple[str, str, str], deque[float]] = field(default_factory=dict)
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    abandoned: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, reason)

    def add(self, key: tuple[str, str, str], seconds: float) -> None:
        self.recent.setdefault(key, deque(maxlen=WINDOW)).append(seconds)
        self.counts[key] = self.counts.get(key, 0) + 1

    def quantiles(self, key: tuple[str, str, str]) -> dict[str, Any]:
        values = sorted(self.recent.get(key, ()))
        out: dict[str, Any] = {"count": self.counts.get(key, 0), "p50": None, "p90": None}
        if values:
            out["p50"] = round(statistics.median(values), 3)
            out["p90"] = round(values[min(len(values) - 1, int(0.9 * len(values)))], 3)
        return out


class StartupTracker:
    """Turns pod events into time-to-ready samples (see the module docstring)."""

    def __init__(
        self,
        node: Callable[[str], NodeState | None],
        recorder: Recorder,
        *,
        wall: Callable[[], float],
        timeout: float = 3600.0,
    ) -> None:
        self._node, self._recorder, self._wall, self.timeout = node, recorder, wall, timeout
        self.tracks: dict[str, Track] = {}
        self.samples = Samples()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._swept = 0.0

    def apply(self, event_type: str, pod: Mapping[str, Any]) -> None:
        """One watch event for a labelled pod."""
        times = pod_times(pod)
        now = self._wall()
        if not times.models or times.uid in self._done:
            return
        track = self.tracks.get(times.uid)
        if track is None and times.node and event_type != "DELETED":
            track = self._start(times, now)
        if track is not None:
            self._advance(times, track, deleted=event_type == "DELETED")
        if now - self._swept > 10.0:
            self.sweep(now)

    def _start(self, times: PodTimes, now: float) -> Track | None:
        bound_at = times.bound_at if times.bound_at is not None else now
        if now - bound_at > LATE_SECONDS:
            self._finish(times.uid)  # bound before we watched: its node state then is unknown
            return None
        kind = kind_of_start(times.models, times.labels, self._node(times.node))
        track = Track(times.models, kind, bound_at, now)
        self.tracks[times.uid] = track
        return track

    def _advance(self, times: PodTimes, track: Track, *, deleted: bool) -> None:
        if times.wait_done_at is not None and not track.wait_recorded:
            track.wait_recorded = True
            self._observe(track, "wait", times.wait_done_at)
        if times.ready_at is not None and times.restarts == 0:
            self._observe(track, "ready", times.ready_at)
            self._finish(times.uid)
        elif reason := _abandon_reason(times, deleted):
            for model in track.models:
                self._count(model, track.kind, reason)
            self._finish(times.uid)

    def _observe(self, track: Track, phase: str, at: float) -> None:
        seconds = max(0.0, at - track.bound_at)
        for model in track.models:
            self.samples.add((model, track.kind, phase), seconds)
            self._recorder.observe(model, track.kind, phase, seconds)

    def _count(self, model: str, kind: str, reason: str) -> None:
        key = (model, reason)
        self.samples.abandoned[key] = self.samples.abandoned.get(key, 0) + 1
        self._recorder.abandoned(model, kind, reason)

    def _finish(self, uid: str) -> None:
        self.tracks.pop(uid, None)
        self._done[uid] = None
        if len(self._done) > DONE_LIMIT:
            self._done.popitem(last=False)

    def sweep(self, now: float) -> None:
        """Count pods bound longer than ``timeout`` ago and still not Ready as ``not_ready``."""
        self._swept = now
        for uid, track in list(self.tracks.items()):
            if now - track.bound_at > self.timeout:
                for model in track.models:
                    self._count(model, track.kind, "not_ready")
                self._finish(uid)

    def cold_seconds(self, model: str) -> float | None:
        """p90 of measured cold binding -> Ready seconds, None with fewer than ``MIN_SAMPLES``."""
        key = (model, "cold", "ready")
        if len(self.samples.recent.get(key, ())) < MIN_SAMPLES:
            return None
        p90 = self.samples.quantiles(key)["p90"]
        return float(p90) if p90 is not None else None

    def summary(self, model: str) -> dict[str, Any]:
        """The REST view: per phase and kind, count (all time) and p50/p90 of recent samples."""
        return {
            "modelId": model,
            "window": WINDOW,
            **{phase: {k: self.samples.quantiles((model, k, phase)) for k in KINDS} for phase in PHASES},
            "abandoned": {r: self.samples.abandoned.get((model, r), 0) for r in REASONS},
            "inProgress": sum(1 for t in self.tracks.values() if model in t.models),
        }


def _abandon_reason(times: PodTimes, deleted: bool) -> str | None:
    if times.restarts > 0:
        return "restarted"
    if times.phase in ("Failed", "Succeeded"):
        return "failed"
    if deleted or times.deleting:
        return "deleted"
    return None
