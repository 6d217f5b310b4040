"""What a run of the load generator asks for (:class:`LoadSpec`) and what it found
(:class:`LoadResult`), shared by :mod:`benchmarks.rawload` and :mod:`benchmarks.rawloop`."""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

WindowHook = Callable[[], dict[str, float]]


@dataclass(frozen=True)
class LoadSpec:
    connections: int = 64
    depth: int = 1  # closed loop: calls in flight per connection; open loop: the cap
    rate: float | None = None  # calls/s over all connections (open loop); None: closed loop
    seconds: float = 2.0
    warmup: float = 0.3
    method: str = "alertSupervisor"
    hot: bool = False  # every call the same argument (joins, cache hits)
    protocol: str = "binary"
    transport: str = "framed"
    tag: str = "k"  # argument prefix, e.g. to keep runs apart
    drain_timeout: float = 5.0
    connect_timeout: float = 5.0

    def shape(self) -> str:
        loop = f"open {self.rate:,.0f}/s" if self.rate else "closed"
        keys = "hot key" if self.hot else "distinct keys"
        return f"{self.connections}x{self.depth} {loop}, {keys}, {self.protocol}/{self.transport}"


@dataclass
class LoadResult:
    spec: dict[str, Any]
    window_s: float = 0.0
    ok: int = 0  # correct replies completed in the window
    wrong: int = 0  # replies to a call in flight, but not its answer (in the window)
    all_ok: int = 0  # the same over the whole run, warm-up and drain included
    all_wrong: int = 0
    all_failed: int = 0  # of all_wrong, the replies that are an error (EXCEPTION message)
    unmatched: int = 0  # replies whose seqid matches no call in flight on that connection
    lost: int = 0  # calls in flight when their connection closed or the drain timed out
    lost_connections: int = 0
    not_sent: int = 0  # open loop: calls due but still waiting for a free slot at the end
    calls_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    generator_cpu_s: float = 0.0
    generator_cpu_us_per_call: float | None = None
    max_in_flight: int = 0
    window_marks: list[dict[str, float]] = field(default_factory=list)
    wrong_samples: list[str] = field(default_factory=list)
    latencies_ns: array[int] = field(default_factory=lambda: array("q"), repr=False)

    @property
    def errors(self) -> int:
        return self.all_wrong + self.unmatched + self.lost + self.not_sent

    def to_dict(self) -> dict[str, Any]:
        """The figures (without the latencies themselves), JSON-ready."""
        out = {k: v for k, v in vars(self).items() if k != "latencies_ns"}
        out["errors"] = self.errors
        return out


def percentiles(latencies_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max (milliseconds, nearest rank) and the sample count."""
    ordered = sorted(latencies_ns)
    n = len(ordered)
    if not n:
        return {"n": 0}

    def rank(q: float) -> float:
        return round(ordered[min(n - 1, max(0, math.ceil(q * n - 1e-9) - 1))] / 1e6, 4)

    out = {f"p{name}": rank(q) for name, q in (("50", 0.5), ("90", 0.9), ("99", 0.99))}
    out["p99.9"] = rank(0.999)
    out["max"] = round(ordered[-1] / 1e6, 4)
    out["n"] = n
    return out
