"""In-memory node index: node states, model holders and the cluster-wide size index.

Built for the scheduler's hot path: a Node event updates the index once, and a request then
scores each offered name with a few set lookups. Names the index has not seen hold nothing.
The index does no I/O; the node cache (``nodecache.py``) feeds it from a Kubernetes watch and
full-Nodes requests build a throwaway one from the request body.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from typing import TypeVar

from locality.contract import PodModels
from locality.identity import ModelRef
from scheduler_extender.nodes import NodeState
from scheduler_extender.scoring import (
    MAX_SCORE,
    filter_reason,
    have_bytes,
    model_weights,
    reference_rate,
    time_score,
)

K = TypeVar("K")
V = TypeVar("V")

MAX_TABLES = 128  # score tables kept (one per set of models asked for since the index last changed)


def remember(cache: dict[K, V], key: K, value: V, limit: int = MAX_TABLES) -> V:
    """``cache[key] = value``, the oldest entry (insertion order) dropped first when full."""
    if len(cache) >= limit:
        del cache[next(iter(cache))]
    cache[key] = value
    return value


class NodeIndex:
    """Node states by name, ready holders by label key, fetches in progress by model, measured
    fetch rates, and model sizes (max over nodes)."""

    def __init__(self, states: Iterable[NodeState] = ()) -> None:
        self._states: dict[str, NodeState] = {}
        self._holders: dict[str, set[str]] = {}
        self._sizes_by_node: dict[str, dict[str, int]] = {}  # model id -> node -> bytes
        self._progress: dict[str, set[str]] = {}  # model id -> nodes with bytes_done of a fetch
        self._rates: dict[str, int] = {}  # node -> measured bytes/s
        self._reference: int | None = None  # reference_rate(rates), None: recompute
        self._cold: dict[str, int] = {}  # node -> score of a node holding none of a pod's models (> 0 only)
        self.sizes: dict[str, int] = {}  # model id -> max bytes reported by any node
        # Per set of a pod's models: {node: score} of every node scoring above 0, built on first use
        # and dropped at any change of the index (kube-scheduler asks once per pod; pods of one
        # Deployment ask for the same models, hundreds a second in a scale-up).
        self._tables: dict[tuple[ModelRef, ...], dict[str, int]] = {}
        for state in states:
            self.upsert(state)

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[NodeState]:
        return iter(list(self._states.values()))

    def get(self, name: str) -> NodeState | None:
        return self._states.get(name)

    def holders(self, label_key: str) -> frozenset[str]:
        """Names of nodes where the model with this label key is ready."""
        return frozenset(self._holders.get(label_key, ()))

    def upsert(self, state: NodeState) -> None:
        """Add or replace a node's state."""
        self.remove(state.name)
        self._tables.clear()
        self._states[state.name] = state
        for label in state.ready_labels:
            self._holders.setdefault(label, set()).add(state.name)
        for mid, size in state.sizes().items():
            per_node = self._sizes_by_node.setdefault(mid, {})
            per_node[state.name] = size
            self.sizes[mid] = max(self.sizes.get(mid, 0), size)
        for mid in _in_progress(state):
            self._progress.setdefault(mid, set()).add(state.name)
        if state.fetch_rate is not None:
            self._rates[state.name] = state.fetch_rate
            self._reference = None

    def remove(self, name: str) -> None:
        """Forget a node (deleted from the cluster)."""
        old = self._states.pop(name, None)
        if old is None:
            return
        self._tables.clear()
        for label in old.ready_labels:
            holders = self._holders.get(label)
            if holders is not None:
                holders.discard(name)
                if not holders:
                    del self._holders[label]
        for mid in old.sizes():
            per_node = self._sizes_by_node.get(mid, {})
            per_node.pop(name, None)
            if per_node:
                self.sizes[mid] = max(per_node.values())
            else:
                self._sizes_by_node.pop(mid, None)
                self.sizes.pop(mid, None)
        for mid in _in_progress(old):
            nodes = self._progress.get(mid)
            if nodes is not None:
                nodes.discard(name)
                if not nodes:
                    del self._progress[mid]
        if self._rates.pop(name, None) is not None:
            self._reference = None

    def replace_all(self, states: Iterable[NodeState]) -> None:
        """Swap in a complete listing (after a re-list); nodes not in it are removed."""
        fresh = {s.name: s for s in states}
        for name in list(self._states):
            if name not in fresh:
                self.remove(name)
        for state in fresh.values():
            if self._states.get(state.name) != state:
                self.upsert(state)

    def add_missing_sizes(self, sizes: Mapping[str, int]) -> None:
        """Borrow sizes of models no node here reported (a full-Nodes request using the cache's)."""
        for mid, size in sizes.items():
            self.sizes.setdefault(mid, size)
        self._tables.clear()

    @property
    def reference(self) -> int:
        """The reference fetch rate (``scoring.reference_rate`` of the measured rates)."""
        if self._reference is None:
            self._reference = reference_rate(list(self._rates.values()))
            ref = self._reference
            self._cold = {n: s for n, r in self._rates.items() if (s := time_score(1, 1, r, ref)) > 0}
        return self._reference

    def rate(self, name: str) -> int:
        """A node's measured fetch rate, or the reference rate when it has not measured one."""
        return self._rates.get(name) or self.reference

    def scores(self, pod: PodModels, names: Sequence[str]) -> list[int]:
        """Scores for ``names`` in the order given (``scoring.score_node`` per node).

        Hot path: the scores of every node for the pod's set of models (``table``) are built once
        per set and index version; a request then maps ``dict.get`` over its names, in C.
        """
        if not pod.refs:
            return [0] * len(names)
        return list(map(self.table(pod).get, names, repeat(0)))

    def table(self, pod: PodModels) -> dict[str, int]:
        """``{node: score}`` of every node that scores above 0 for the pod's models (cached: the
        same object until the index changes, so what is derived from it can be kept by identity).

        A node holding none of them scores by its rate alone (``_cold``, precomputed when rates
        change: 0 for most nodes); nodes where a requested model is ready (a bitmask from the
        holder sets) or being fetched are scored one by one, each (mask, rate) of those without a
        fetch in progress once.
        """
        key = pod.refs
        found = self._tables.get(key)
        if found is not None:
            return found
        reference = self.reference
        table = dict(self._cold)
        for name, score in self._special(pod, reference).items():
            if score:
                table[name] = score
            else:
                table.pop(name, None)
        return remember(self._tables, key, table)

    def _special(self, pod: PodModels, reference: int) -> dict[str, int]:
        """Scores of the nodes where one of the pod's models is ready or in progress."""
        weights = model_weights(pod.refs, self.sizes)
        total = sum(weights)
        masks = self._masks(pod)
        fetching = self._fetching(pod)
        memo: dict[tuple[int, int], int] = {}
        out: dict[str, int] = {}
        for name, mask in masks.items():
            if name in fetching:
                continue
            rate = self._rates.get(name) or reference
            key = (mask, rate)
            if key not in memo:
                have = sum(w for i, w in enumerate(weights) if mask >> i & 1)
                memo[key] = time_score(total - have, total, rate, reference)
            out[name] = memo[key]
        for name in fetching:
            out[name] = self._score_one(pod, name, weights, masks.get(name, 0), reference)
        return out

    def _score_one(self, pod: PodModels, name: str, weights: Sequence[int], mask: int, reference: int) -> int:
        state = self._states[name]
        have = sum(
            have_bytes(w, bool(mask >> i & 1), state.models.get(r.id))
            for i, (w, r) in enumerate(zip(weights, pod.refs, strict=True))
        )
        total = sum(weights)
        return MAX_SCORE if have >= total else time_score(total - have, total, self.rate(name), reference)

    def _fetching(self, pod: PodModels) -> set[str]:
        """Nodes fetching one of the pod's models with progress reported."""
        found: set[str] = set()
        for ref in pod.refs:
            found |= self._progress.get(ref.id, set())
        return found

    def _masks(self, pod: PodModels, names: Sequence[str] | None = None) -> dict[str, int]:
        """``{node: bitmask of the pod's models ready there}`` over ``names`` (None: every node),
        nodes holding none left out."""
        masks: dict[str, int] = {}
        offered: set[str] | None = None
        for bit, ref in enumerate(pod.refs):
            holders = self._holders.get(ref.label_key)
            if not holders:
                continue
            if names is not None and len(holders) > len(names):
                offered = offered if offered is not None else set(names)
                holders = holders & offered
            flag = 1 << bit
            for name in holders:
                masks[name] = masks.get(name, 0) | flag
        return masks

    def filter(self, pod: PodModels, names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """Split ``names`` into passing names (order kept) and ``{failed name: reason}``."""
        if not pod.required:
            return list(names), {}
        masks = self._masks(pod, names)
        memo: dict[int, str | None] = {}
        passed: list[str] = []
        failed: dict[str, str] = {}
        for name in names:
            mask = masks.get(name, 0)
            if mask not in memo:
                ready = {r.label_key for i, r in enumerate(pod.refs) if mask >> i & 1}
                memo[mask] = filter_reason(pod, ready)
            reason = memo[mask]
            if reason is None:
                passed.append(name)
            else:
                failed[name] = reason
        return passed, failed


def _in_progress(state: NodeState) -> list[str]:
    """Model ids the node is fetching with some ``bytes_done`` reported."""
    return [mid for mid, e in state.models.items() if e.bytes_done]
