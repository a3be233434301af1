"""In-memory node index: node states, model holders and the cluster-wide size index.

Built for the scheduler's hot path: a Node event updates the index once, and a request then
scores each offered name with a few set lookups. Names the index has not seen hold nothing.
The index does no I/O; the node cache (``nodecache.py``) feeds it from a Kubernetes watch and
full-Nodes requests build a throwaway one from the request body.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from locality.contract import PodModels
from scheduler_extender.nodes import NodeState
from scheduler_extender.scoring import filter_reason, locality_score, model_weights


class NodeIndex:
    """Node states by name, ready holders by label key, and model sizes (max over nodes)."""

    def __init__(self, states: Iterable[NodeState] = ()) -> None:
        self._states: dict[str, NodeState] = {}
        self._holders: dict[str, set[str]] = {}
        self._sizes_by_node: dict[str, dict[str, int]] = {}  # model id -> node -> bytes
        self.sizes: dict[str, int] = {}  # model id -> max bytes reported by any node
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
        self._states[state.name] = state
        for label in state.ready_labels:
            self._holders.setdefault(label, set()).add(state.name)
        for mid, size in state.sizes().items():
            per_node = self._sizes_by_node.setdefault(mid, {})
            per_node[state.name] = size
            self.sizes[mid] = max(self.sizes.get(mid, 0), size)

    def remove(self, name: str) -> None:
        """Forget a node (deleted from the cluster)."""
        old = self._states.pop(name, None)
        if old is None:
            return
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

    def scores(self, pod: PodModels, names: Sequence[str]) -> list[int]:
        """Scores for ``names`` in the order given (``scoring.locality_score`` per node).

        Hot path: each node's set of ready requested models is a bitmask built from the holder
        sets (intersected with the offered names when a model is on more nodes than offered),
        and each distinct mask is scored once.
        """
        if not pod.refs:
            return [0] * len(names)
        weights = model_weights(pod.refs, self.sizes)
        masks = self._masks(pod, names)
        if not masks:
            return [0] * len(names)
        memo: dict[int, int] = {0: 0}
        count = len(pod.refs)
        for mask in set(masks.values()):
            memo[mask] = locality_score(weights, [bool(mask >> i & 1) for i in range(count)])
        if len(memo) == 2:  # one distinct non-zero score: a plain membership test is fastest
            score = memo[next(iter(set(masks.values())))]
            return [score if n in masks else 0 for n in names]
        get = masks.get
        return [memo[get(n, 0)] for n in names]

    def _masks(self, pod: PodModels, names: Sequence[str]) -> dict[str, int]:
        """``{offered name: bitmask of the pod's models ready there}``, names holding none left out."""
        masks: dict[str, int] = {}
        offered: set[str] | None = None
        for bit, ref in enumerate(pod.refs):
            holders = self._holders.get(ref.label_key)
            if not holders:
                continue
            if len(holders) > len(names):
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
