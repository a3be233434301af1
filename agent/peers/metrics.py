"""The peer counters, registered in the agent's own registry (``agent.metrics.AgentMetrics.registry``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

PREFIX = "model_locality_agent"


class PeerMetrics:
    """Bytes to and from peers and from the origin, peer errors, refused peer calls."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry(auto_describe=True)  # a registry of its own unless given
        self.registry = r
        self.peer_bytes = Counter(
            f"{PREFIX}_peer_bytes",
            "Chunk bytes moved between agents: direction=received (fetched from peers) or sent (uploaded).",
            ["direction"],
            registry=r,
        )
        self.origin_bytes = Counter(
            f"{PREFIX}_origin_bytes", "Chunk bytes fetched from models' origins.", registry=r
        )
        self.peer_errors = Counter(
            f"{PREFIX}_peer_errors",
            "Failed chunk transfers from peers: kind=digest (a bad chunk; the peer was dropped), "
            "transfer (timeout, reset, refused) or map (an unreadable chunk map).",
            ["kind"],
            registry=r,
        )
        self.peer_refused = Counter(
            f"{PREFIX}_peer_refused",
            "Calls to this agent's peer endpoint refused: reason=unauthenticated, forbidden or busy.",
            ["reason"],
            registry=r,
        )

    def collectors(self) -> list[Counter]:
        return [self.peer_bytes, self.origin_bytes, self.peer_errors, self.peer_refused]
