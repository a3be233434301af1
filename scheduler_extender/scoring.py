"""Locality scoring and filtering: pure functions from a pod's model request and node state.

A pod asks for models with the annotations (the pod contract, ``locality.contract``)
``model-locality.io/models`` (comma-separated URIs) and ``model-locality.io/locality``
(``preferred``, the default, or ``required``).

No ImageLocality-style spread damping: with 0..10 integer scores a damping factor would erase
the difference between partly warm nodes, and piling replicas onto the few warm nodes is
bounded by their GPUs and countered by the scheduler's own spreading plugins; a
ModelDistribution with ``replicas: N`` is the tool to warm more nodes ahead of a scale-up.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence

from locality.contract import PodModels
from locality.identity import ModelRef

log = logging.getLogger(__name__)

MAX_SCORE = 10  # MaxExtenderPriority


def model_weights(refs: Sequence[ModelRef], sizes: Mapping[str, int]) -> tuple[int, ...]:
    """Each model's weight in bytes: its known size, else the mean of the known ones, else 1.

    ``sizes`` maps model id -> total bytes as reported by any node (the cluster-wide size index).
    A model no node has reported yet weighs the integer mean of the pod's known model sizes;
    when none is known every model weighs 1, i.e. models count equally.
    """
    known = [sizes[r.id] for r in refs if sizes.get(r.id, 0) > 0]
    fallback = max(1, sum(known) // len(known)) if known else 1
    return tuple(sizes[r.id] if sizes.get(r.id, 0) > 0 else fallback for r in refs)


def locality_score(weights: Sequence[int], ready: Sequence[bool]) -> int:
    """score = floor(10 * sum(weight_m for ready m) / sum(weight_m)), an integer in 0..10.

    Only 10 means every requested byte is ready, so a complete node always outranks a partial one,
    and a node holding more of the requested bytes never scores lower than one holding fewer.
    """
    total = sum(weights)
    if total <= 0:
        return 0
    have = sum(w for w, r in zip(weights, ready, strict=True) if r)
    return (MAX_SCORE * have) // total


def score_node(pod: PodModels, ready_labels: Collection[str], sizes: Mapping[str, int]) -> int:
    """The score of one node for ``pod``: share of the pod's model bytes ready there (0..10)."""
    if not pod.refs:
        return 0
    weights = model_weights(pod.refs, sizes)
    return locality_score(weights, [r.label_key in ready_labels for r in pod.refs])


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
