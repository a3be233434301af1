"""Prometheus metrics of the node agent, one registry per app instance (tests run several apps).

Every name is ``model_locality_agent_*`` with the unit suffix Prometheus recommends
(``_total`` for counters, ``_bytes``, ``_seconds``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from locality.contract import MODEL_STATES
from locality.httpkit import timing_middleware

PREFIX = "model_locality_agent"
# Model fetches run from seconds (small models, warm S3) to an hour (a 400 GB model on one NIC).
FETCH_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, float("inf"))


class AgentMetrics:
    """The agent's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.fetched_bytes = Counter(
            f"{PREFIX}_fetched_bytes",
            "Bytes downloaded into the cache, by source scheme.",
            ["scheme"],
            registry=r,
        )
        self.fetch_duration = Histogram(
            f"{PREFIX}_fetch_duration_seconds",
            "Wall time of model fetches, by outcome.",
            ["outcome"],
            buckets=FETCH_BUCKETS,
            registry=r,
        )
        self.models = Gauge(f"{PREFIX}_models", "Models known to the agent, by state.", ["state"], registry=r)
        self.cache_used = Gauge(f"{PREFIX}_cache_used_bytes", "Bytes used by the cache.", registry=r)
        self.cache_quota = Gauge(f"{PREFIX}_cache_quota_bytes", "Byte quota of the cache.", registry=r)
        # With these two an alert can tell "over the watermark and eviction cannot help".
        self.cache_pinned = Gauge(
            f"{PREFIX}_cache_pinned_bytes",
            "Bytes of committed models that are pinned (used by pods, targeted by distributions).",
            registry=r,
        )
        self.cache_high_watermark = Gauge(
            f"{PREFIX}_cache_high_watermark_bytes",
            "Eviction starts above this many bytes (the quota times the high watermark).",
            registry=r,
        )
        self.quarantined = Gauge(
            f"{PREFIX}_quarantined_models",
            "Models set aside in quarantine/ because their record could not be parsed.",
            registry=r,
        )
        self.evictions = Counter(f"{PREFIX}_evictions", "Models evicted to stay under the quota.", registry=r)
        self.verification_failures = Counter(
            f"{PREFIX}_verification_failures",
            "Fetches or checks whose size or digest did not match.",
            registry=r,
        )
        self.kube_api_errors = Counter(
            f"{PREFIX}_kube_api_errors", "Failed Kubernetes API calls, by operation.", ["op"], registry=r
        )
        self.http_requests = Counter(
            f"{PREFIX}_http_requests",
            "REST requests, by route and status code.",
            ["route", "code"],
            registry=r,
        )
        self.http_duration = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "REST request latency, by route.",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.ready = Gauge(
            f"{PREFIX}_ready", "1 once the cache is scanned and labels reconciled.", registry=r
        )
        for state in MODEL_STATES:
            self.models.labels(state=state).set(0)
        for outcome in ("ready", "failed", "cancelled"):
            self.fetch_duration.labels(outcome=outcome)

    def set_model_counts(self, states: Iterable[str]) -> None:
        counts = dict.fromkeys(MODEL_STATES, 0)
        for state in states:
            counts[state] = counts.get(state, 0) + 1
        for state, count in counts.items():
            self.models.labels(state=state).set(count)

    def set_usage(self, used: int, quota: int) -> None:
        self.cache_used.set(used)
        self.cache_quota.set(quota)

    def track_pins(self, pinned: Callable[[], int], high_watermark: Callable[[], int]) -> None:
        """Read the pinned bytes and the high watermark at scrape time."""
        self.cache_pinned.set_function(lambda: float(pinned()))
        self.cache_high_watermark.set_function(lambda: float(high_watermark()))

    def middleware(self) -> Middleware:
        """Count every request by its route template (not the raw path: ids would explode labels)."""

        def record(request: web.Request, status: int, seconds: float) -> None:
            route = _route_of(request)
            self.http_requests.labels(route=route, code=str(status)).inc()
            self.http_duration.labels(route=route).observe(seconds)

        middleware: Middleware = timing_middleware(record)
        return middleware


def _route_of(request: web.Request) -> str:
    info = request.match_info.route.resource
    if info is None:
        return "unmatched"
    canonical: str = info.canonical
    return f"{request.method} {canonical}"
