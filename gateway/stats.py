"""Per-node counters, shared by the proxy (which counts), the admin endpoint and heartbeats."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


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
    started_at: float = field(default_factory=time.time)

    def snapshot(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}
