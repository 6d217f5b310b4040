"""Metrics: latency histogram labels stay bounded whatever method names clients send."""

from __future__ import annotations

from gateway.proxy.metrics import MAX_METHOD_LABELS, Metrics
from gateway.stats import NodeStats


def test_method_labels_are_capped() -> None:
    """Beyond MAX_METHOD_LABELS distinct methods, further ones are counted as _other."""
    metrics = Metrics(NodeStats(), "n1", lambda: "disabled")
    for i in range(MAX_METHOD_LABELS + 50):
        metrics.observe(f"m{i}", "backend", 0.01)
    text = metrics.render().decode()
    counts = [
        line for line in text.splitlines() if line.startswith("gateway_call_latency_seconds_count")
    ]
    assert len(counts) == MAX_METHOD_LABELS + 1
    assert 'gateway_call_latency_seconds_count{method="_other",source="backend"} 50.0' in counts


def test_node_counters_are_exported() -> None:
    """The node's NodeStats counters appear as gateway_*_total with the node label."""
    stats = NodeStats(calls=7, backend_calls=2)
    text = Metrics(stats, "n1", lambda: "cluster").render().decode()
    assert 'gateway_calls_total{node="n1"} 7.0' in text
    assert 'gateway_backend_calls_total{node="n1"} 2.0' in text
    assert 'gateway_redis_mode{mode="cluster"} 1.0' in text


def test_client_connection_limits_are_exported() -> None:
    """Connection gauges and backpressure counters appear in /metrics, pauses by reason."""
    stats = NodeStats(
        client_connections=3,
        clients_paused=1,
        reads_paused_unsent=4,
        reads_paused_pipelined=5,
        connections_refused=6,
        idle_closed=7,
        oversized_calls=8,
    )
    text = Metrics(stats, "n1", lambda: "local").render().decode()
    assert 'gateway_client_connections{node="n1"} 3.0' in text
    assert 'gateway_clients_paused{node="n1"} 1.0' in text
    assert 'gateway_reads_paused_total{node="n1",reason="unsent"} 4.0' in text
    assert 'gateway_reads_paused_total{node="n1",reason="pipelined"} 5.0' in text
    assert 'gateway_connections_refused_total{node="n1"} 6.0' in text
    assert 'gateway_idle_closed_total{node="n1"} 7.0' in text
    assert 'gateway_oversized_calls_total{node="n1"} 8.0' in text


def test_latency_histogram_buckets_are_cumulative_and_bounded_by_labels() -> None:
    """Observations land in cumulative le-buckets with count and sum; method labels beyond
    the cap are counted as _other."""
    from gateway.proxy.metrics import MAX_METHOD_LABELS, Metrics
    from gateway.stats import NodeStats

    metrics = Metrics(NodeStats(), "n1", lambda: "disabled")
    metrics.observe("m", "backend", 0.004)
    metrics.observe("m", "backend", 0.004)
    metrics.observe("m", "backend", 60.0)
    for i in range(MAX_METHOD_LABELS + 5):
        metrics.observe(f"x{i}", "joined", 0.001)
    text = metrics.render().decode()
    assert 'gateway_call_latency_seconds_bucket{le="0.001",method="m",source="backend"} 0.0' in text
    assert 'gateway_call_latency_seconds_bucket{le="0.005",method="m",source="backend"} 2.0' in text
    assert 'gateway_call_latency_seconds_bucket{le="+Inf",method="m",source="backend"} 3.0' in text
    assert 'gateway_call_latency_seconds_count{method="m",source="backend"} 3.0' in text
    assert 'gateway_call_latency_seconds_sum{method="m",source="backend"} 60.008' in text
    assert 'method="_other"' in text


def test_a_configured_method_keeps_its_label_past_the_cap() -> None:
    """A method with a [methods] entry gets its own latency label even after clients have
    used up MAX_METHOD_LABELS with invented names (they, not it, count as "_other")."""
    metrics = Metrics(NodeStats(), "n1", lambda: "disabled")
    for i in range(MAX_METHOD_LABELS + 50):
        metrics.observe(f"junk{i}", "backend", 0.01)
    metrics.observe("alertSupervisor", "backend", 0.01, configured=True)
    metrics.observe("invented", "backend", 0.01)
    text = metrics.render().decode()
    assert 'method="alertSupervisor"' in text
    assert 'method="invented"' not in text and 'method="_other"' in text
