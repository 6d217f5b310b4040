"""Chaos soak: many calls over several nodes while processes are killed, paused and restarted.

    python -m benchmarks.chaos --calls 100000 [--seconds 900] [--seed 1] [--nodes 3]
        [--sentinel] [--connections 48] [--json]

Starts, on loopback, Redis (``--sentinel``: a master, a replica and three sentinels), the
thriftpy2 counting backend and ``--nodes`` gateway nodes (benchmarks/chaos_faults.py), then
drives ``--calls`` calls at them from one epoll loop (benchmarks/chaos_load.py: random keys,
methods, services, protocols, transports, plain or multiplexed; in herds) while a fault
loop kills, pauses and restarts things every few seconds. Launching stops after
``--calls`` calls or ``--seconds`` seconds, whichever comes first; then the calls still out
are waited for (each until its 30 s deadline). Every process is stopped by PID at the end,
also on Ctrl-C or SIGTERM.

Reports (table, or ``--json``): calls answered correctly, crossed replies (must be 0),
lost calls - no reply and no error by the deadline (must be 0) -, errors by kind, and
backend calls per in-flight window. Each herd is one window with its own call identity, so
the counting backend's arrival log (one line per backend call, kept across its restarts)
says exactly how many backend calls it cost. Every extra call is put down to the fault in
progress (or ended less than ``SETTLE`` seconds earlier) when it reached the backend; one
with no fault near is a late caller if it arrived after the window's first backend call
had finished (a new window, as designed), else "unexplained" (the report then shows the
window's callers, its backend arrivals and the nodes' log around it).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.chaos_faults import PAGE_DELAY, Fault, FaultLoop, Fleet
from benchmarks.chaos_load import Herd, Soak, Tally
from benchmarks.chaos_wire import CallSpec
from benchmarks.common import markdown_table, raise_fd_limit, stop_children_on_sigterm
from benchmarks.loadspec import percentiles

NodeLog = Callable[[float, float], list[str]]
SETTLE = 5.0  # seconds a fault's effects may outlast its end (every node in cluster mode again)
LATE = "no fault: a late caller, after the first backend call had finished (new window)"
UNEXPLAINED = "no fault: unexplained (within the first backend call)"
OUTAGE = "no fault: a node lost Redis by itself (its reply_timeout expired), local-only"


def read_arrivals(log: Path) -> dict[str, list[float]]:
    """Backend arrival times per call name, from the counting backend's ``--log``."""
    arrivals: dict[str, list[float]] = defaultdict(list)
    if log.exists():
        for line in log.read_text().splitlines():
            when, _, name = line.partition("\t")
            arrivals[name].append(float(when))
    return arrivals


def cause(
    at: float, first: float, herd: Herd, faults: list[Fault], outages: Sequence[Fault] = ()
) -> str:
    """What made the backend call arriving at ``at`` (not the window's first) happen: an
    injected fault near it; else a node that had lost Redis by itself just then (its own
    log says so); else a late caller or nothing known."""
    near = [f for f in faults if f.started <= at <= (f.ended or at) + SETTLE]
    if near:
        return max(near, key=lambda f: f.started).kind
    if any(o.started - 0.5 <= at <= o.ended + 0.5 for o in outages):
        return OUTAGE
    return LATE if at > first + backend_seconds(herd.spec) else UNEXPLAINED


def backend_seconds(spec: CallSpec) -> float:
    """How long the counting backend works on a call: its ``delay``; pages take the
    backend's page delay, except ``busy:`` pages, which fail with Busy at once."""
    if spec.method != "page":
        return spec.delay
    return 0.0 if spec.arg.startswith("busy:") else PAGE_DELAY


def explain(
    herd: Herd, times: list[float], faults: list[Fault], node_log: NodeLog | None
) -> dict[str, Any]:
    """What the soak knows about one window with an unexplained extra backend call."""
    t0 = herd.started
    before = [f for f in faults if f.started <= times[-1]]
    last = max(before, key=lambda f: f.started) if before else None
    return {
        "call": str(herd.spec),
        "callers": [f"n{node + 1} +{at - t0:.3f}s" for node, at in herd.members],
        "outcomes": dict(Counter(herd.outcomes)),
        "backend_arrivals": [f"+{at - t0:.3f}s" for at in times],
        "last_fault": (
            f"{last.kind} {last.target} {last.started - t0:+.1f}s..{last.ended - t0:+.1f}s"
            if last
            else None
        ),
        "node_log": node_log(t0 - 2.0, times[-1] + 1.0)[-40:] if node_log else [],
    }


def analyse(
    tally: Tally,
    faults: list[Fault],
    arrivals: dict[str, list[float]],
    node_log: NodeLog | None = None,
    outages: Sequence[Fault] = (),
) -> dict[str, Any]:
    backend_calls = 0
    by_cause: dict[str, Counter[str]] = defaultdict(Counter)
    duplicated_windows = 0
    unexplained: list[dict[str, Any]] = []
    for herd in tally.herds:
        times = sorted(arrivals.get(herd.spec.backend_name, []))
        backend_calls += len(times)
        if len(times) > 1:
            duplicated_windows += 1
            causes = Counter(cause(at, times[0], herd, faults, outages) for at in times[1:])
            for why, extra in causes.items():
                by_cause[why]["windows"] += 1
                by_cause[why]["extra_calls"] += extra
            if UNEXPLAINED in causes and len(unexplained) < 5:
                unexplained.append(explain(herd, times, faults, node_log))
    # The load generator's percentiles (nearest rank), from seconds.
    ranks = percentiles([round(seconds * 1e9) for seconds in tally.latencies])

    def pct(name: str) -> float | None:
        return round(ranks[name], 1) if name in ranks else None

    return {
        "calls": {
            "launched": tally.launched,
            "correct": tally.correct,
            "crossed": tally.crossed,
            "lost": tally.lost,
            "errors": sum(tally.errors.values()),
            "errors_by_kind": dict(tally.errors.most_common()),
            "unexpected_replies": tally.unexpected,
            "crossed_samples": tally.crossed_samples,
        },
        "latency_ms": {"p50": pct("p50"), "p99": pct("p99"), "max": pct("max")},
        "windows": {
            "total": len(tally.herds),
            "herds_of_2_or_more": sum(1 for h in tally.herds if h.size > 1),
            "backend_calls": backend_calls,
            "with_extra_backend_calls": duplicated_windows,
            "extra_backend_calls": sum(c["extra_calls"] for c in by_cause.values()),
            "by_cause": {why: dict(c) for why, c in sorted(by_cause.items())},
            "unexplained_samples": unexplained,
        },
        "faults": dict(Counter(f.kind for f in faults)),
        "fault_seconds": {
            kind: _spread([f.ended - f.started for f in faults if f.kind == kind])
            for kind in sorted({f.kind for f in faults})
        },
        "faults_not_recovered": sum(1 for f in faults if not f.recovered),
        "fault_log": [
            {"kind": f.kind, "target": f.target, "seconds": round(f.ended - f.started, 2)}
            for f in faults
        ],
    }


def _spread(values: list[float]) -> str:
    """The range of ``values`` (seconds), as "min-max"."""
    return f"{min(values):.1f}-{max(values):.1f}" if values else "-"


def render(report: dict[str, Any]) -> str:
    calls, windows = report["calls"], report["windows"]
    setup = report["setup"]
    lines = [
        f"`python -m benchmarks.chaos {setup['command']}`: {calls['launched']:,} calls in "
        f"{report['wall_s']} s ({report['calls_per_s']:,} calls/s) over {setup['nodes']} "
        f"nodes, {sum(report['faults'].values())} faults.",
        "",
        markdown_table(
            ["calls", "answered correctly", "crossed", "lost", "errors", "p50 ms", "p99 ms"],
            [
                [calls[k] for k in ("launched", "correct", "crossed", "lost", "errors")]
                + [report["latency_ms"]["p50"], report["latency_ms"]["p99"]]
            ],
        ),
        "",
        markdown_table(
            ["error", "calls"], [[k, v] for k, v in calls["errors_by_kind"].items()] or [["-", 0]]
        ),
        "",
        markdown_table(
            ["fault", "times", "seconds until whole again (restarted, all nodes in cluster mode)"],
            [[k, n, report["fault_seconds"][k]] for k, n in sorted(report["faults"].items())],
        ),
        "",
        f"In-flight windows: {windows['total']:,} ({windows['herds_of_2_or_more']:,} herds of "
        f"2-12 callers, the rest single calls), {windows['backend_calls']:,} backend calls; "
        f"{windows['with_extra_backend_calls']} windows had "
        f"{windows['extra_backend_calls']} extra backend calls:",
        "",
        markdown_table(
            ["cause of the extra backend call", "windows", "extra backend calls"],
            [[why, c["windows"], c["extra_calls"]] for why, c in windows["by_cause"].items()]
            or [["-", 0, 0]],
        ),
        "",
        "Nodes that lost Redis with no fault injected (their own log): "
        + (", ".join(report.get("redis_lost_without_fault", [])) or "none")
        + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=900.0, help="stop launching after")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--sentinel", action="store_true")
    parser.add_argument("--connections", type=int, default=48, help="per node")
    parser.add_argument(
        "--fault-gap",
        type=float,
        nargs=2,
        default=(2.0, 4.0),
        metavar=("MIN", "MAX"),
        help="seconds between faults, drawn from [MIN, MAX]",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.nodes < 1 or args.seconds <= 0:
        parser.error("--calls, --nodes and --seconds must be positive")
    if not 0 < args.fault_gap[0] <= args.fault_gap[1]:
        parser.error("--fault-gap needs 0 < MIN <= MAX")
    stop_children_on_sigterm()
    raise_fd_limit()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="gw-chaos-") as workdir:
        fleet = Fleet(Path(workdir), args.nodes, args.sentinel)
        faults = FaultLoop(fleet, random.Random(rng.random()), gap=tuple(args.fault_gap))
        soak: Soak | None = None
        try:
            fleet.start()
            soak = Soak(
                fleet.addresses,
                random.Random(rng.random()),
                calls=args.calls,
                seconds=args.seconds,
                connections_per_node=args.connections,
            )
            started = time.monotonic()
            faults.start()
            tally = soak.run()
            wall = time.monotonic() - started
        finally:
            faults.stopping.set()
            if faults.is_alive():
                faults.join(timeout=60)
            if soak is not None:
                soak.close()
            fleet.close()
        if faults.error is not None:
            print(f"chaos: the fault loop failed: {faults.error!r}", file=sys.stderr)
        arrivals = read_arrivals(fleet.backend_log)
        outages = fleet.redis_outages()
        report = analyse(tally, faults.faults, arrivals, fleet.node_log, outages)
        injected = [(f.started, (f.ended or f.started) + SETTLE) for f in faults.faults]
        report["redis_lost_without_fault"] = [
            f"{o.target} for {o.ended - o.started:.2f}s"
            for o in outages
            if not any(start <= o.started <= end for start, end in injected)
        ]
        for sample in report["calls"]["crossed_samples"]:  # what the nodes said around it
            at = float(sample["time"])
            sample["node_log"] = fleet.node_log(at - 3.0, at + 0.5)[-40:]
            sample["faults"] = [
                f"{f.kind} {f.target} {f.started - at:+.1f}s..{f.ended - at:+.1f}s"
                for f in faults.faults
                if f.started - 10 <= at <= f.ended + 10
            ]
    command = " ".join(argv if argv is not None else sys.argv[1:])
    report.update(
        setup={"command": command, **{k: v for k, v in vars(args).items() if k != "json"}},
        wall_s=round(wall, 1),
        calls_per_s=round(tally.launched / wall),
    )
    print(json.dumps(report, indent=1) if args.json else render(report))
    return 1 if report["calls"]["crossed"] or report["calls"]["lost"] or faults.error else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # every process was stopped on the way out (main's finally)
        print("chaos: interrupted", file=sys.stderr)
        sys.exit(130)
