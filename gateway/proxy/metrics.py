"""Prometheus metrics: the node's counters (from :class:`NodeStats`) plus latency histograms.

With :class:`~gateway.observe.Observations` also errors by kind and, once a flight table
feeds ``observations.flights``, the age of the oldest call in flight (computed at scrape time).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.observe import Observations
from gateway.stats import NodeStats

_COUNTERS = {
    "calls": "Client calls received",
    "backend_calls": "Calls this node sent to a backend",
    "coalesced_local": "Calls that joined an identical call in flight on this node",
    "coalesced_remote": "Calls answered by following another node's leader",
    "cache_hits": "Calls answered from the cache (fresh or stale)",
    "errors": "Calls answered with a gateway-made TApplicationException",
    "connections_refused": "Client connections closed at once because max_connections was reached",
    "idle_closed": "Client connections closed after idle_timeout without bytes or calls",
    "oversized_calls": "Framed client calls over max_frame_size, answered with PROTOCOL_ERROR",
    "backend_connects": "Backend connections made",
    "backend_connect_failures": "Backend connects that failed",
    "backend_idle_closed": "Backend connections closed after the pool's idle_timeout",
    "backend_calls_shed": "Waiting backend calls refused (overloaded) to make room: the heaviest"
    " client's newest",
    "partial_closed": "Client connections closed with a partial message: past body_timeout, "
    "or the largest when the node's partial messages exceeded max_partial_bytes",
}

_GAUGES = {
    "in_flight": "Client calls waiting for an answer",
    "client_connections": "Client connections open",
    "clients_paused": "Client connections whose calls are not being read (backpressure)",
    "backend_connections": "Backend connections open",
    "backend_connections_idle": "Backend connections open and free (one call per connection)",
    "backend_connecting": "Backend connects in flight",
    "partial_bytes": "Bytes of partial client messages buffered (bounded by max_partial_bytes)",
}

# reason label -> NodeStats counter of the times a client's socket stopped being read.
_PAUSE_REASONS = {"unsent": "reads_paused_unsent", "pipelined": "reads_paused_pipelined"}


MAX_METHOD_LABELS = 200  # distinct method label values; further methods count as "_other"
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _Latencies(Collector):
    """``gateway_call_latency_seconds{method,source}``, counted without a lock per call.

    prometheus_client's Histogram takes a lock and updates several values per observation;
    the reactor thread is the only writer here, so an observation is one bisect and two
    list/float updates, and the cumulative buckets are built only when scraped.
    """

    def __init__(self) -> None:
        # (method, source) -> [count per bucket (the last is +Inf), ..., sum of seconds]
        self._series: dict[tuple[str, str], list[float]] = {}
        self._methods: set[str] = set()

    def observe(self, method: str, source: str, seconds: float, configured: bool = False) -> None:
        """``configured``: the method has a [methods] entry (bounded by the config), so it
        gets its own label whatever names clients have sent before."""
        series = self._series.get((method, source))
        if series is None:
            series = self._new_series(method, source, configured)
        series[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        series[-1] += seconds

    def _new_series(self, method: str, source: str, configured: bool) -> list[float]:
        if method not in self._methods and not configured:
            if len(self._methods) >= MAX_METHOD_LABELS:
                method = "_other"  # bounded label cardinality whatever clients send
            else:
                self._methods.add(method)
        return self._series.setdefault((method, source), [0.0] * (len(LATENCY_BUCKETS) + 2))

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "gateway_call_latency_seconds",
            "Client-observed call latency through the gateway",
            labels=["method", "source"],
        )
        for (method, source), series in sorted(self._series.items()):
            running = 0.0
            buckets = []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), series, strict=False):
                running += count
                buckets.append((_bound(bound), running))
            family.add_metric([method, source], buckets, series[-1])
        yield family


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


class _StatsCollector(Collector):
    def __init__(
        self,
        stats: NodeStats,
        node_id: str,
        mode: Callable[[], str],
        observations: Observations | None,
        now: Callable[[], float],
    ) -> None:
        self._stats = stats
        self._node_id = node_id
        self._mode = mode
        self._observations = observations
        self._now = now

    def collect(self) -> Iterator[Metric]:
        for name, doc in _COUNTERS.items():
            family = CounterMetricFamily(f"gateway_{name}", doc, labels=["node"])
            family.add_metric([self._node_id], float(getattr(self._stats, name)))
            yield family
        for name, doc in _GAUGES.items():
            gauge = GaugeMetricFamily(f"gateway_{name}", doc, labels=["node"])
            gauge.add_metric([self._node_id], float(getattr(self._stats, name)))
            yield gauge
        paused = CounterMetricFamily(
            "gateway_reads_paused",
            "Times a client's socket stopped being read: replies unread beyond max_unsent_bytes"
            " (reason unsent) or max_pipelined calls unanswered (reason pipelined)",
            labels=["node", "reason"],
        )
        for reason, name in _PAUSE_REASONS.items():
            paused.add_metric([self._node_id, reason], float(getattr(self._stats, name)))
        yield paused
        mode = GaugeMetricFamily(
            "gateway_redis_mode", "1 for the node's current coordination mode", labels=["mode"]
        )
        mode.add_metric([self._mode()], 1.0)
        yield mode
        info = GaugeMetricFamily("gateway_build_info", "Always 1", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        if self._observations is not None:
            yield from self._observed(self._observations)

    def _observed(self, observations: Observations) -> Iterator[Metric]:
        kinds = CounterMetricFamily(
            "gateway_errors_by_kind",
            "Gateway-made error replies by kind (backend_timeout, overloaded, ...)",
            labels=["node", "kind"],
        )
        for kind, count in sorted(observations.errors.snapshot().items()):
            kinds.add_metric([self._node_id, kind], float(count))
        yield kinds
        if observations.flights is None:
            return  # nothing knows call start times yet: no gauge rather than a false 0
        oldest = observations.flights.oldest_started_at()
        age = GaugeMetricFamily(
            "gateway_oldest_in_flight_seconds",
            "Age of the oldest call in flight on this node (0 when none)",
            labels=["node"],
        )
        age.add_metric([self._node_id], 0.0 if oldest is None else max(0.0, self._now() - oldest))
        yield age


class Metrics:
    """One registry per node (not the global one), so tests can run several nodes in-process."""

    def __init__(
        self,
        stats: NodeStats,
        node_id: str,
        mode: Callable[[], str],
        observations: Observations | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        """``now``: the clock of ``observations.flights`` start times (the reactor's)."""
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(stats, node_id, mode, observations, now))
        self._latencies = _Latencies()
        self.registry.register(self._latencies)
        self.observe = self._latencies.observe  # the per-call entry point, bound once

    def render(self) -> bytes:
        return generate_latest(self.registry)
