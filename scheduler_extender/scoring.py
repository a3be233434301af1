"""Locality scoring and filtering by predicted time to ready: pure functions of a pod's models and node state.

A pod asks for models with the annotations (the pod contract, ``locality.contract``)
``model-locality.io/models`` (comma-separated URIs) and ``model-locality.io/locality``
(``preferred``, the default, or ``required``). A node's score is the share of a reference cold
start it saves (``time_score``): missing bytes (ready models count whole, a fetch in progress
its ``bytes_done``) over the node's measured fetch rate (``model-locality.io/fetch-rate``).

No ImageLocality-style spread damping: with 0..10 integer scores a damping factor would erase
the difference between partly warm nodes, and piling replicas onto the few warm nodes is
bounded by their GPUs and countered by the scheduler's own spreading plugins; a
ModelDistribution with ``replicas: N`` is the tool to warm more nodes ahead of a scale-up.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Collection, Mapping, Sequence

from locality.contract import IN_FLIGHT_STATES, ModelEntry, PodModels
from locality.identity import ModelRef

log = logging.getLogger(__name__)

MAX_SCORE = 10  # MaxExtenderPriority
# Assumed fetch rate when no node has measured one (bytes/s). It only sets the scale of predicted
# seconds: with every node at the same rate, scores depend on bytes alone.
DEFAULT_RATE = 200 * 10**6


def model_weights(refs: Sequence[ModelRef], sizes: Mapping[str, int]) -> tuple[int, ...]:
    """Each model's weight in bytes: its known size, else the mean of the known ones, else 1.

    ``sizes`` maps model id -> total bytes as reported by any node (the cluster-wide size index).
    A model no node has reported yet weighs the integer mean of the pod's known model sizes;
    when none is known every model weighs 1, i.e. models count equally.
    """
    known = [sizes[r.id] for r in refs if sizes.get(r.id, 0) > 0]
    fallback = max(1, sum(known) // len(known)) if known else 1
    return tuple(sizes[r.id] if sizes.get(r.id, 0) > 0 else fallback for r in refs)


def reference_rate(measured: Collection[int]) -> int:
    """R, the rate a cold start is measured against: the slowest credible measured node rate,
    max(min, median / 4), so one broken node cannot compress everyone else's scores; with no
    measurement at all, ``DEFAULT_RATE``. A node that has not measured yet is assumed to fetch at R."""
    if not measured:
        return DEFAULT_RATE
    ordered = sorted(measured)
    return max(ordered[0], int(statistics.median(ordered)) // 4, 1)


def time_score(missing: int, total: int, rate: int, reference: int) -> int:
    """score = 10 when nothing is missing, else clamp(floor(10 * (1 - t / T)), 0, 9), with
    t = missing / rate (this node's predicted seconds until ready) and T = total / reference
    (the pod's cold start at the reference rate). Integers only: floor(10 (total r - missing R) / (total r)).

    With every node at the same rate this is the share of the pod's bytes already on the node
    (floor(10 * have / total)); a node 90% through a fetch scores 9, a cold node 0 unless it
    fetches faster than the reference, and of two cold nodes the faster never scores lower.
    """
    if missing <= 0:
        return MAX_SCORE
    if total <= 0 or rate <= 0:
        return 0
    scaled = total * rate
    return max(0, min(MAX_SCORE - 1, (MAX_SCORE * (scaled - missing * reference)) // scaled))


def have_bytes(weight: int, ready: bool, entry: ModelEntry | None) -> int:
    """A model's weight already on a node: all of it when ready; for a fetch in progress the
    share ``bytes_done / bytes`` of the weight, never all of it (only ready is whole); else 0."""
    if ready:
        return weight
    if entry is None or entry.bytes_done is None or not entry.bytes or entry.state not in IN_FLIGHT_STATES:
        return 0
    return min(weight - 1, weight * min(entry.bytes_done, entry.bytes) // entry.bytes)


def seconds_until_ready(
    pod: PodModels,
    ready_labels: Collection[str],
    models: Mapping[str, ModelEntry],
    sizes: Mapping[str, int],
    *,
    rate: int,
) -> float:
    """Predicted seconds until all of ``pod``'s models are ready on a node: missing bytes / rate."""
    weights = model_weights(pod.refs, sizes)
    have = sum(
        have_bytes(w, r.label_key in ready_labels, models.get(r.id))
        for w, r in zip(weights, pod.refs, strict=True)
    )
    return max(0, sum(weights) - have) / max(rate, 1)


def score_node(
    pod: PodModels,
    ready_labels: Collection[str],
    sizes: Mapping[str, int],
    *,
    models: Mapping[str, ModelEntry] | None = None,
    rate: int | None = None,
    reference: int = DEFAULT_RATE,
) -> int:
    """The score of one node for ``pod`` (``time_score``); ``rate`` None: the reference rate."""
    if not pod.refs:
        return 0
    weights = model_weights(pod.refs, sizes)
    entries = models or {}
    have = sum(
        have_bytes(w, r.label_key in ready_labels, entries.get(r.id))
        for w, r in zip(weights, pod.refs, strict=True)
    )
    total = sum(weights)
    return time_score(total - have, total, reference if rate is None else rate, reference)


def missing_models(pod: PodModels, ready_labels: Collection[str]) -> tuple[ModelRef, ...]:
    """The pod's models that are not ready on a node with these ready labels."""
    return tuple(r for r in pod.refs if r.label_key not in ready_labels)


def filter_reason(pod: PodModels, ready_labels: Collection[str]) -> str | None:
    """Why a node fails a ``required`` pod, or ``None`` when it passes.

    ``preferred`` pods pass everywhere. A ``required`` pod whose annotation holds a URI that
    cannot be normalised fails everywhere: it asked for a model no node can ever hold.
    """
    if not pod.required:
        return None
    if pod.invalid:
        return f"model-locality: {pod.invalid[0]}"
    missing = missing_models(pod, ready_labels)
    if not missing:
        return None
    names = ", ".join(r.uri for r in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return f"model-locality: required model not ready here: {names}{more}"
