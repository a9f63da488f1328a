"""Prometheus metrics of one app, in their own registry, with bounded label values."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from vistag.http.config import HTTP_METHODS

# -- metrics --------------------------------------------------------------------------------------
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Prometheus metrics of one app, in their own registry (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vistag_http_requests",
            "HTTP requests by method, route and status code",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "vistag_http_request_duration_seconds",
            "HTTP request duration",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.search_latency = Histogram(
            "vistag_search_latency_seconds",
            "Search time in the service (encode, FAISS search, catalog join) by query kind",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.thumbnails = Counter(
            "vistag_thumbnails", "Thumbnail requests by cache result", ["cache"], registry=r
        )
        ProcessCollector(registry=r)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """``method`` is any token a client sent: others than :data:`HTTP_METHODS` count as "other"."""
        method = method if method in HTTP_METHODS else "other"
        self.requests.labels(method, route, str(int(status))).inc()
        self.request_latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
