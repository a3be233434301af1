"""Target choice for a ModelDistribution: a pure, deterministic function of the cluster's nodes.

Every extender replica computes the same answer from the same nodes, so two replicas writing the
same status are idempotent and need no leader election.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import xxhash

from scheduler_extender.nodes import NodeState

ALL = "all"
HOLDING_STATES = frozenset({"queued", "fetching", "ready"})


@dataclass(frozen=True, slots=True)
class Want:
    """What a distribution asks for: one model on ``replicas`` (or all) nodes matching a selector."""

    model_id: str
    label_key: str
    replicas: int | str  # int >= 1, or "all"
    node_selector: Mapping[str, str]
    model_bytes: int | None = None  # known size (size index), None when no node reported it


def rendezvous(model_id: str, node: str) -> int:
    """Highest-random-weight hash: xxh3_64(f"{model_id}/{node}"), a node's rank for one model."""
    return int(xxhash.xxh3_64_intdigest(f"{model_id}/{node}".encode()))


def eligible(want: Want, nodes: Sequence[NodeState]) -> list[NodeState]:
    """Nodes that may receive the model.

    A node is eligible when it matches ``nodeSelector``, is schedulable (not cordoned), its Ready
    condition is True, it is a GPU node (``nvidia.com/gpu`` allocatable > 0; when no node in the
    cluster has GPUs, every node counts, so CPU-only test clusters work), and it has room for the
    model when both its free space and the model size are known. A node that already holds the
    model (queued, fetching or ready) always has room for it.
    """
    any_gpu = any(n.gpus > 0 for n in nodes)
    return [
        n
        for n in nodes
        if n.schedulable
        and n.ready
        and (n.gpus > 0 or not any_gpu)
        and all(n.labels.get(k) == v for k, v in want.node_selector.items())
        and _has_room(want, n)
    ]


def _has_room(want: Want, node: NodeState) -> bool:
    if holds(want, node):
        return True
    if node.free_bytes is None or want.model_bytes is None:
        return True
    return node.free_bytes >= want.model_bytes


def holds(want: Want, node: NodeState) -> bool:
    """The model is ready on the node, or its agent is already fetching it."""
    if want.label_key in node.ready_labels:
        return True
    entry = node.models.get(want.model_id)
    return entry is not None and entry.state in HOLDING_STATES


def choose_targets(want: Want, nodes: Iterable[NodeState], previous: Sequence[str] = ()) -> tuple[str, ...]:
    """The target node names, sorted by name.

    ``replicas: "all"``: every eligible node. Otherwise ``replicas`` nodes: first the previous
    targets that are still eligible (so targets never move while they stay usable), then by rank
    = (holds the model ready, holds it in flight, rendezvous(model_id, node)) highest first. Fewer
    eligible nodes than replicas gives all of them. Nodes that come or go without being chosen do
    not move the others: rendezvous ranks each node independently of the rest.
    """
    ok = eligible(want, list(nodes))
    if want.replicas == ALL:
        return tuple(sorted(n.name for n in ok))
    count = int(want.replicas)
    ranked = sorted(ok, key=lambda n: _rank(want, n), reverse=True)
    kept = set(previous)
    chosen = [n.name for n in ranked if n.name in kept][:count]
    for node in ranked:
        if len(chosen) >= count:
            break
        if node.name not in chosen:
            chosen.append(node.name)
    return tuple(sorted(chosen))


def _rank(want: Want, node: NodeState) -> tuple[bool, bool, int]:
    return (want.label_key in node.ready_labels, holds(want, node), rendezvous(want.model_id, node.name))
