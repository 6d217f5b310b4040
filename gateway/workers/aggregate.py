"""One node's counters, metrics and health, summed over its workers (pure: no I/O).

The supervisor reads each worker (its ``/state``: NodeStats, heartbeat extras, error kinds,
health and the ``/metrics`` text) and feeds the readings to :class:`NodeView`, which knows
which process serves each slot now.

Counters never go backwards and never count twice: a slot's counters are those of its
current worker plus ``retired``, the last reading of every earlier worker in that slot (a
restarted worker starts again from 0). What a crashed worker counted after its last reading
is lost; a worker that drained reports its final counts in its summary line, which replace
its last reading. Monotonic values: NodeStats counters, numeric heartbeat extras (hmac
rejects, depositions), error kinds, and every counter and histogram sample of /metrics.
Gauges are the live workers' only: summed (calls in flight, connections), except those in
:data:`MAX_GAUGES`, where the node's value is the largest (oldest call in flight, the
``1`` of mode and build info), and in :data:`MIN_GAUGES`, the smallest (the worst worker's
reload state). ``_created`` samples are left out: they are per process.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gateway.stats import NodeStats

STATS_GAUGES = frozenset(
    {
        "in_flight",
        "client_connections",
        "clients_paused",
        "started_at",
        "backend_connections",
        "backend_connections_idle",
        "backend_connecting",
    }
)
MAX_GAUGES = frozenset(
    {"gateway_oldest_in_flight_seconds", "gateway_redis_mode", "gateway_build_info"}
)
# The node is as good as its worst worker: a reload that failed in one worker, the oldest
# config a worker runs (config reload's gauges).
MIN_GAUGES = frozenset(
    {"gateway_config_last_reload_successful", "gateway_config_loaded_timestamp_seconds"}
)
MONOTONIC_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})
# Worst first: a node is as degraded as its most degraded worker.
MODE_RANK = {"local": 0, "cluster-polling": 1, "private-polling": 1}

LabelKey = tuple[tuple[str, str], ...]
# ("stats", name), ("extra", name), ("error", kind) or (family, sample name, LabelKey)
Key = tuple[Any, ...]


@dataclass
class Reading:
    """One worker's ``/state``.

    Its ``/metrics`` text is parsed only when asked for (a scrape of the node, a worker's
    end): the supervisor reads every worker every second for its heartbeat and health,
    which need the counters alone, and parsing that text costs far more than the rest.
    """

    pid: int
    health: dict[str, Any]
    stats: dict[str, float]
    extra: dict[str, float | str]
    errors: dict[str, float]
    metrics_text: str

    @cached_property
    def families(self) -> list[Metric]:
        return [
            f
            for f in text_string_to_metric_families(self.metrics_text)
            if not f.name.endswith("_created")
        ]

    @classmethod
    def parse(cls, state: Mapping[str, Any]) -> Reading:
        """Raises ValueError (or KeyError/TypeError) on a malformed state."""
        return cls(
            pid=int(state["pid"]),
            health=dict(state["health"]),
            stats={str(k): float(v) for k, v in dict(state["stats"]).items()},
            extra={
                str(k): (v if isinstance(v, str) else float(v))
                for k, v in dict(state["extra"]).items()
            },
            errors={str(k): float(v) for k, v in dict(state["errors"]).items()},
            metrics_text=str(state["metrics"]),
        )

    def monotonic(self, metrics: bool = True) -> dict[Key, float]:
        """Every value of this reading that only grows while its worker lives (without the
        /metrics samples if not ``metrics``)."""
        values: dict[Key, float] = {}
        for name, value in self.stats.items():
            if name not in STATS_GAUGES:
                values["stats", name] = value
        for name, extra in self.extra.items():
            if not isinstance(extra, str):
                values["extra", name] = extra
        for kind, count in self.errors.items():
            values["error", kind] = count
        if not metrics:
            return values
        for family in self.families:
            if family.type in MONOTONIC_TYPES:
                for sample in family.samples:
                    if not sample.name.endswith("_created"):
                        values[family.name, sample.name, _labels(sample.labels)] = sample.value
        return values


def _labels(labels: Mapping[str, str]) -> LabelKey:
    return tuple(sorted(labels.items()))


@dataclass
class SlotView:
    pid: int | None = None  # the worker serving this slot now
    reading: Reading | None = None  # its latest reading
    seq: int = -1  # the fetch the reading came from (later fetches win)
    retired: dict[Key, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DrainLine:
    """A worker's drain summary line, parsed (see DrainSummary.line)."""

    drained: bool
    abandoned: int
    counters: dict[str, float]


_DRAIN = re.compile(
    r"^gateway \S+ stopped: (?:(?P<drained>drained)|drain timed out, (?P<abandoned>\d+) "
    r"call\(s\) abandoned); (?P<counters>.*)$"
)


def parse_drain_line(line: str) -> DrainLine | None:
    match = _DRAIN.match(line)
    if match is None:
        return None
    counters: dict[str, float] = {}
    for pair in match["counters"].split():
        name, _, value = pair.partition("=")
        try:
            counters[name] = float(value)
        except ValueError:
            continue
    abandoned = int(match["abandoned"] or 0)
    return DrainLine(match["drained"] is not None, abandoned, counters)


class NodeView:
    """The node as its workers' readings add up."""

    def __init__(self, workers: int, node_id: str, started_at: float) -> None:
        self.node_id = node_id
        self.started_at = started_at
        self.slots = [SlotView() for _ in range(workers)]
        self._families: dict[str, tuple[str, str]] = {}  # family -> (type, documentation)

    # -- feeding ------------------------------------------------------------------------

    def started(self, index: int, pid: int) -> None:
        slot = self.slots[index]
        slot.pid, slot.reading, slot.seq = pid, None, -1

    def update(self, index: int, seq: int, reading: Reading) -> bool:
        """Take ``reading`` if it is from the slot's current worker and newer than the one
        held; False when it was dropped (a late answer of a worker since replaced)."""
        slot = self.slots[index]
        if reading.pid != slot.pid or seq <= slot.seq:
            return False
        slot.reading, slot.seq = reading, seq
        return True

    def _learn_families(self, reading: Reading) -> None:
        """Remember each family's type and help: its samples may outlive the worker."""
        for family in reading.families:
            self._families.setdefault(family.name, (family.type, family.documentation))

    def ended(self, index: int, pid: int, drain: DrainLine | None = None) -> None:
        """The slot's worker ``pid`` exited: its counts so far become the slot's retired
        counts (its summary line's final counts where it printed one)."""
        slot = self.slots[index]
        if slot.pid != pid:
            return
        final: dict[Key, float] = {}
        if slot.reading is not None:
            self._learn_families(slot.reading)
            final = slot.reading.monotonic()
        if drain is not None:
            for name, value in drain.counters.items():
                key: Key = ("stats", name)
                final[key] = max(final.get(key, 0.0), value)
        for key, value in final.items():
            slot.retired[key] = slot.retired.get(key, 0.0) + value
        slot.pid, slot.reading, slot.seq = None, None, -1

    # -- reading ------------------------------------------------------------------------

    @property
    def readings(self) -> list[Reading]:
        return [s.reading for s in self.slots if s.reading is not None]

    def totals(self, metrics: bool = True) -> dict[Key, float]:
        """Monotonic values summed over every worker, past and present (without the
        /metrics samples if not ``metrics``: what the heartbeat and health need)."""
        total: dict[Key, float] = {}
        for slot in self.slots:
            current = slot.reading.monotonic(metrics) if slot.reading is not None else {}
            for source in (slot.retired, current):
                for key, value in source.items():
                    if metrics or len(key) == 2:
                        total[key] = total.get(key, 0.0) + value
        return total

    def stats(self) -> NodeStats:
        """The node's NodeStats: counters from :meth:`totals`, gauges of live workers."""
        values: dict[str, float] = {}
        for key, value in self.totals(metrics=False).items():
            if key[0] == "stats":
                values[key[1]] = value
        for reading in self.readings:
            for name in STATS_GAUGES - {"started_at"}:
                values[name] = values.get(name, 0.0) + reading.stats.get(name, 0.0)
        known = NodeStats.__dataclass_fields__
        kwargs: dict[str, Any] = {k: int(v) for k, v in values.items() if k in known}
        return NodeStats(**kwargs, started_at=self.started_at)

    def errors(self) -> dict[str, int]:
        return {k[1]: int(v) for k, v in self.totals(metrics=False).items() if k[0] == "error"}

    def extra(self) -> dict[str, float | str]:
        """Heartbeat extras: numbers summed (monotonic), ``redis_mode`` the worst worker's,
        other text (sessions) every worker's, comma-separated; error kinds as ``error.*``."""
        totals = self.totals(metrics=False)
        out: dict[str, float | str] = {k[1]: v for k, v in totals.items() if k[0] == "extra"}
        texts: dict[str, list[str]] = {}
        for reading in self.readings:
            for name, value in reading.extra.items():
                if isinstance(value, str):
                    texts.setdefault(name, []).append(value)
        for name, values in texts.items():
            out[name] = worst_mode(values) if name == "redis_mode" else ",".join(sorted(values))
        for key, count in totals.items():
            if key[0] == "error":
                out[f"error.{key[1]}"] = float(int(count))
        return out

    def modes(self) -> list[str]:
        return [str(r.health.get("redis", "")) for r in self.readings]

    def families(self, extra: Iterable[Metric] = ()) -> list[Metric]:
        """Every /metrics family of the node, merged as the module doc says."""
        for reading in self.readings:
            self._learn_families(reading)
        totals = self.totals()
        merged: dict[str, Metric] = {}

        def family(name: str) -> Metric:
            if name not in merged:
                kind, doc = self._families.get(name, ("untyped", ""))
                merged[name] = Metric(name, doc, kind)
            return merged[name]

        gauges: dict[tuple[str, str, LabelKey], float] = {}
        for reading in self.readings:
            for fam in reading.families:
                family(fam.name)
                if fam.type in MONOTONIC_TYPES:
                    continue
                for sample in fam.samples:
                    key: tuple[str, str, LabelKey] = (fam.name, sample.name, _labels(sample.labels))
                    if key in gauges and fam.name in MAX_GAUGES:
                        gauges[key] = max(gauges[key], sample.value)
                    elif key in gauges and fam.name in MIN_GAUGES:
                        gauges[key] = min(gauges[key], sample.value)
                    else:
                        gauges[key] = gauges.get(key, 0.0) + sample.value
        samples: list[tuple[str, str, LabelKey, float]] = []
        for total_key, value in totals.items():
            if len(total_key) == 3:  # a /metrics sample
                fam_name, sample_name, labels = total_key
                samples.append((fam_name, sample_name, labels, value))
        samples += [(f, s, labels, v) for (f, s, labels), v in gauges.items()]
        for fam_name, sample_name, labels, value in samples:
            family(fam_name).add_sample(sample_name, dict(labels), value)
        return [*merged.values(), *extra]

    def render(self, extra: Iterable[Metric] = ()) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(self.families(extra)))
        return generate_latest(registry)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def worst_mode(modes: Iterable[str]) -> str:
    """The most degraded of some workers' coordination modes ("" if none)."""
    present = [m for m in modes if m]
    if not present:
        return ""
    return min(present, key=lambda m: (MODE_RANK.get(m, 2), m))
