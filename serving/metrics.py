"""Prometheus metrics of one serving app: the signals a GPU autoscaler reads (queue, latency)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "model_locality_serving"
# 1 ms .. 10 s, about 3 buckets per decade: fine enough to read a p99 off histogram_quantile.
LATENCY_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
PHASES = ("wait_for_cache", "verify", "load", "warmup")


@dataclass
class Metrics:
    """All metrics in a registry of their own (tests run several apps in one process)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "Inputs waiting for a batch", registry=r)
        self.in_flight = Gauge(
            f"{PREFIX}_in_flight_requests", "Embedding requests admitted and not yet answered", registry=r
        )
        self.requests = Counter(
            f"{PREFIX}_requests", "Embedding requests by HTTP status", ["code"], registry=r
        )
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Embedding request latency, admission to answer (successful requests)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time an input waited before its batch ran",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size", "Inputs per forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_duration = Histogram(
            f"{PREFIX}_batch_duration_seconds",
            "Forward pass time per batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inputs = Counter(f"{PREFIX}_inputs", "Inputs embedded", registry=r)
        self.tokens = Counter(f"{PREFIX}_tokens", "Tokens embedded (after truncation)", registry=r)
        self.startup_phase = Gauge(
            f"{PREFIX}_startup_phase_seconds", "Duration of each start-up phase", ["phase"], registry=r
        )
        self.ready = Gauge(f"{PREFIX}_ready", "1 once the model is loaded and warmed up", registry=r)
        self.healthy = Gauge(f"{PREFIX}_healthy", "1 when the last health inference matched", registry=r)
        for phase in PHASES:
            self.startup_phase.labels(phase=phase)
