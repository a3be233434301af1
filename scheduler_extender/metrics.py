"""Prometheus metrics of the extender, one registry per app instance.

Names are ``model_locality_*`` with Prometheus unit suffixes (``_seconds``, ``_bytes``, ``_total``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from locality.httpkit import timing_middleware

# The scheduler waits on filter (serially) with a 2-5 s timeout; the interesting range is sub-ms to 1 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DISTRIBUTION_STATES = ("pending", "progressing", "ready", "unsatisfiable")
# Binding -> wait container done / Ready: a warm start takes seconds, a cold one up to the wait timeout.
STARTUP_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800, 3600)


class Metrics:
    """The extender's metric families."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "model_locality_extender_requests",
            "HTTP requests by verb (route) and status code",
            ["verb", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "model_locality_extender_request_duration_seconds",
            "Time to answer a request, by verb",
            ["verb"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.nodes_offered = Histogram(
            "model_locality_extender_request_nodes",
            "Candidate nodes per filter/prioritize request",
            ["verb"],
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000),
            registry=r,
        )
        self.node_cache_nodes = Gauge(
            "model_locality_extender_node_cache_nodes", "Nodes in the watch-backed node cache", registry=r
        )
        self.node_cache_age = Gauge(
            "model_locality_extender_node_cache_age_seconds",
            "Seconds since the node cache last completed a list or received a watch event",
            registry=r,
        )
        self.node_cache_synced = Gauge(
            "model_locality_extender_node_cache_synced",
            "1 once the node cache has listed all Nodes",
            registry=r,
        )
        self.bad_annotations = Counter(
            "model_locality_extender_bad_annotations",
            "Pod or Node annotations that could not be understood (scored as no models)",
            ["object"],
            registry=r,
        )
        self.distributions = Gauge(
            "model_locality_extender_distributions",
            "ModelDistributions by state",
            ["state"],
            registry=r,
        )
        self.distribution_targets = Gauge(
            "model_locality_extender_distribution_targets",
            "Target nodes of all ModelDistributions by per-node model state",
            ["state"],
            registry=r,
        )
        self.webhook_requests = Counter(
            "model_locality_extender_webhook_requests",
            "Admission reviews by result: mutated, skipped (nothing asked), failed (not mutated)",
            ["result"],
            registry=r,
        )
        for result in ("mutated", "skipped", "failed"):  # every series from the first scrape
            self.webhook_requests.labels(result)
        self.status_writes = Counter(
            "model_locality_extender_status_writes",
            "ModelDistribution status writes, by result",
            ["result"],
            registry=r,
        )

        self.startup = Histogram(
            "model_locality_startup_seconds",
            "Seconds from binding to the end of the wait init container (phase=wait) and to Ready "
            "(phase=ready) of injected pods, by model id and kind of start (warm, fetching, cold)",
            ["model", "kind", "phase"],
            buckets=STARTUP_BUCKETS,
            registry=r,
        )
        self.startup_abandoned = Counter(
            "model_locality_startup_abandoned",
            "Injected pods that restarted, failed, were deleted or never became Ready before "
            "their first Ready (not counted as starts), by model id, kind of start and reason",
            ["model", "kind", "reason"],
            registry=r,
        )

    def observe(self, model: str, kind: str, phase: str, seconds: float) -> None:
        """A time-to-ready sample (``startup.Recorder``)."""
        self.startup.labels(model, kind, phase).observe(seconds)

    def abandoned(self, model: str, kind: str, reason: str) -> None:
        """A start that did not end Ready (``startup.Recorder``)."""
        self.startup_abandoned.labels(model, kind, reason).inc()

    def track_node_cache(
        self, size: Callable[[], int], age: Callable[[], float], synced: Callable[[], bool]
    ) -> None:
        """Read the cache's size, age and sync state at scrape time."""
        self.node_cache_nodes.set_function(lambda: float(size()))
        self.node_cache_age.set_function(age)
        self.node_cache_synced.set_function(lambda: 1.0 if synced() else 0.0)

    def middleware(self) -> Any:
        """Count and time every request by route name (``verb``) and final status code."""
        requests, latency = self.requests, self.latency

        def record(request: web.Request, status: int, seconds: float) -> None:
            route = request.match_info.route
            verb = route.name or ("unmatched" if route.resource is None else "other")
            requests.labels(verb, str(status)).inc()
            latency.labels(verb).observe(seconds)

        return timing_middleware(record)
