"""Per-node counters, shared by the proxy (which counts), the admin endpoint and heartbeats."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

# The counters a node's history records and ``gateway status`` sums, in display order: one
# list, so the heartbeat, the history reader and the status table agree on what there is.
TRAFFIC_COUNTERS = (
    "calls",
    "backend_calls",
    "coalesced_local",
    "coalesced_remote",
    "cache_hits",
    "errors",
)


@dataclass
class NodeStats:
    """Monotonic counters plus the ``in_flight`` gauge for one gateway node."""

    calls: int = 0  # client calls received (all modes, oneway included)
    backend_calls: int = 0  # calls this node sent to a backend
    coalesced_local: int = 0  # calls that joined an identical call in flight on this node
    coalesced_remote: int = 0  # calls answered by following another node's leader
    cache_hits: int = 0  # calls answered from the cache (fresh or stale)
    errors: int = 0  # calls answered with a gateway-made TApplicationException
    in_flight: int = 0  # client calls currently waiting for an answer
    # Client connections (gateway.proxy.connections): gauges, then counters.
    client_connections: int = 0  # client connections open now
    clients_paused: int = 0  # client connections whose socket is not being read now
    reads_paused_unsent: int = 0  # pauses: replies unread beyond max_unsent_bytes
    reads_paused_pipelined: int = 0  # pauses: max_pipelined calls unanswered
    connections_refused: int = 0  # connections closed at once: max_connections reached
    idle_closed: int = 0  # connections closed after idle_timeout
    oversized_calls: int = 0  # framed calls over max_frame_size, answered PROTOCOL_ERROR
    partial_closed: int = 0  # connections closed: body_timeout or max_partial_bytes
    partial_bytes: int = 0  # bytes of partial client messages buffered now
    # Backend connection pools (gateway.proxy.upstream): gauges, then counters.
    backend_connections: int = 0  # backend connections open now
    backend_connections_idle: int = 0  # of those, free (one call per connection pools)
    backend_connecting: int = 0  # backend connects in flight now
    backend_connects: int = 0  # backend connections made
    backend_connect_failures: int = 0  # backend connects that failed
    backend_idle_closed: int = 0  # backend connections closed after idle_timeout
    backend_calls_shed: int = 0  # waiting calls refused for the heaviest client's queue
    started_at: float = field(default_factory=time.time)

    def snapshot(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}
