"""Live readings from the nodes' admin endpoints, for the demo's progress line.

The Redis heartbeats refresh once a second, too coarse for a progress line on a herd that
lasts a few seconds, so the demo asks the nodes' ``/metrics`` directly while it runs (with
:mod:`gateway.processes`' readers). Every probe is best effort: a node that does not answer in
time reads as "no data", never as an error.
"""

from __future__ import annotations

from gateway.processes import GatewayProcess, metric_samples, metric_total


def progress_counts(node: GatewayProcess) -> tuple[int, int]:
    """(client calls answered, backend calls) of ``node`` right now; (0, 0) when it does
    not answer."""
    samples = metric_samples(node.admin_url)
    calls = metric_total(samples, "gateway_calls_total") or 0.0
    in_flight = metric_total(samples, "gateway_in_flight") or 0.0
    backend = metric_total(samples, "gateway_backend_calls_total") or 0.0
    return int(calls - in_flight), int(backend)
