"""The proxy comparison: direct, nginx, haproxy and the gateway's modes, side by side and
interleaved, under the same cheap load generator (:mod:`benchmarks.rawload`).

    python -m benchmarks.compare [--json] [--repeat 3] [--seconds 1.5] [--baseline-rev REV]
                                 [--only direct,nginx,haproxy,passthrough,...]
                                 [--shapes sync,pipelined,light]

Targets (each a process started once and kept for the whole run):

* ``direct``: the cheap backend (:mod:`benchmarks.responder`), which every other target
  fronts; ``direct_example``: the Twisted ``gateway example-backend``, to show what it costs;
* ``nginx`` (stream proxy) and ``haproxy`` (tcp mode), if installed: skipped with a reason
  otherwise;
* the gateway with ``[methods.alertSupervisor]`` in mode ``passthrough``, ``coalesce``
  (distinct keys: nothing to join), ``join`` (coalesce, one hot key, backend delay 2 ms so
  the calls overlap) and ``cache`` (ttl 60, one hot key: all hits after the first);
* ``passthrough_2w``: the passthrough node with ``workers = 2`` (its CPU: supervisor,
  workers and private redis-server together); ``coalesce_2w`` (only with ``--only``): the
  coalesce node with ``workers = 2``;
* with ``--baseline-rev REV``: the same four gateway modes from a ``git worktree`` of REV.

Load shapes (closed loop): ``sync`` 64 connections x 1 call in flight (sync Thrift clients),
``pipelined`` 64 x 16, ``light`` 1 connection with sequential calls (added latency). Then
open loop at 50% and 90% of the passthrough gateway's ``sync`` throughput, the same rate for
every target. Every repeat runs every target (the order rotates per repeat), so drift on the
box hits them alike; a row shows the median run's calls/s and CPU, and latency percentiles
over the calls of all its runs. CPU is utime+stime from /proc/<pid>/stat over the recorded
window, per correct reply in it; the generator's own is getrusage() of this process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.common import (
    counters_delta,
    gateway_counters,
    machine_info,
    raise_fd_limit,
    stop_children_on_sigterm,
)
from benchmarks.rawload import LoadSpec, percentiles, run_load
from benchmarks.targets import Fleet, Target
from gateway.processes import REPO_ROOT

JOIN_DELAY = 0.002  # seconds: long enough for a round of 64 calls to pile onto one
ALL_TARGETS = (
    "direct_example", "direct", "nginx", "haproxy", "passthrough", "coalesce", "join", "cache",
    "passthrough_2w",
)  # fmt: skip
GATEWAY_SLUGS = ("passthrough", "coalesce", "join", "cache")
# Accepted by --only, not run by default: a 2-worker node without [redis] coalesces through
# its private Redis, i.e. at the cluster path's cost (see README "Workers").
OPTIONAL_TARGETS = ("coalesce_2w",)


@dataclass(frozen=True)
class Shape:
    slug: str
    title: str
    connections: int
    depth: int
    share: float  # of --seconds


SHAPES = (
    Shape("sync", "64 connections x 1 call in flight (sync clients)", 64, 1, 1.0),
    Shape("pipelined", "64 connections x 16 calls in flight (pipelined)", 64, 16, 0.7),
    Shape("light", "1 connection, sequential calls (light load)", 1, 1, 0.7),
)
OPEN_FRACTIONS = (0.5, 0.9)
OPEN_CONNECTIONS, OPEN_DEPTH = 64, 16
# Closed loop only: the Twisted example backend (shown for its cost) and the join target
# (its latency is the backend's 2 ms delay).
NOT_OPEN = ("direct_example", "join", "base_join")


def measure(target: Target, spec: LoadSpec) -> tuple[dict[str, Any], list[int]]:
    """One run of ``spec`` at ``target``: its figures and its latencies (ns)."""
    before = gateway_counters(target.admin_port) if target.admin_port else None
    result = run_load(target.host, target.port, spec, window_hook=target.cpu)
    start, end = result.window_marks
    ok = result.ok

    def per_call(key: str) -> float | None:
        return round(1e6 * (end[key] - start[key]) / ok, 2) if ok else None

    row: dict[str, Any] = {
        "target": target.slug,
        "calls_per_s": result.calls_per_s,
        "ok": ok,
        "errors": result.errors,
        "wrong_samples": result.wrong_samples,
        "lost_connections": result.lost_connections,
        "latency_ms": result.latency_ms,
        "proxy_cpu_us_per_call": per_call("proxy") if target.proxy_pids else None,
        "backend_cpu_us_per_call": per_call("backend"),
        "generator_cpu_us_per_call": result.generator_cpu_us_per_call,
        "window_s": result.window_s,
        "max_in_flight": result.max_in_flight,
    }
    if spec.rate:
        row["rate"] = spec.rate
        row["not_sent"] = result.not_sent
    if before is not None and target.admin_port:
        delta = counters_delta(before, gateway_counters(target.admin_port))
        calls = delta.get("calls", 0)
        row["gateway_counters"] = delta
        row["join_rate"] = round(delta.get("coalesced_local", 0) / calls, 4) if calls else None
        row["cache_hit_rate"] = round(delta.get("cache_hits", 0) / calls, 4) if calls else None
    return row, list(result.latencies_ns)


def summarise(runs: list[dict[str, Any]], latencies: list[int]) -> dict[str, Any]:
    """One row from a target's runs of one shape: the median-throughput run's figures,
    percentiles over every run's calls, and each run's calls/s and proxy CPU."""
    ordered = sorted(runs, key=lambda r: r["calls_per_s"])
    median = ordered[(len(ordered) - 1) // 2]
    out = {k: v for k, v in median.items() if k not in ("latency_ms", "wrong_samples")}
    out["latency_ms"] = percentiles(latencies)
    out["errors"] = sum(r["errors"] - r.get("not_sent", 0) for r in runs)
    out["not_sent"] = sum(r.get("not_sent", 0) for r in runs)
    out["wrong_samples"] = [s for r in runs for s in r["wrong_samples"]][:5]
    out["runs"] = len(runs)
    out["calls_per_s_runs"] = [r["calls_per_s"] for r in runs]
    out["proxy_cpu_us_per_call_runs"] = [r["proxy_cpu_us_per_call"] for r in runs]
    cpus = [r["proxy_cpu_us_per_call"] for r in runs if r["proxy_cpu_us_per_call"] is not None]
    out["proxy_cpu_us_per_call_median"] = round(statistics.median(cpus), 2) if cpus else None
    return out


def rotate(items: Sequence[Target], by: int) -> list[Target]:
    k = by % len(items)
    return [*items[k:], *items[:k]]


def start_fleet(fleet: Fleet, only: Sequence[str], baseline_rev: str | None) -> str | None:
    """Start every target in ``only`` (plus the baseline's); returns the baseline's short
    commit id."""
    responder = fleet.responder()
    setup = "`python -m benchmarks.responder --listen 127.0.0.1:0`"
    slow = fleet.responder(JOIN_DELAY) if "join" in only or baseline_rev else None
    if "direct_example" in only:
        example = fleet.example_backend()
        fleet.add_direct(
            "direct_example",
            "direct, example backend (Twisted)",
            example,
            "`gateway example-backend --listen 127.0.0.1:0 --service supervisor --delay 0`",
        )
    if "direct" in only:
        fleet.add_direct("direct", "direct, cheap backend", responder, setup)
    if "nginx" in only:
        fleet.add_nginx(responder)
    if "haproxy" in only:
        fleet.add_haproxy(responder)
    for mode in GATEWAY_SLUGS:
        if mode in only:
            backend = slow if mode == "join" and slow else responder
            fleet.add_gateway(mode, backend, delay=JOIN_DELAY if mode == "join" else 0.0)
    for slug in ("passthrough_2w", "coalesce_2w"):  # workers = 2: what a second core buys
        if slug in only:
            fleet.add_gateway(slug, responder)
    if not baseline_rev:
        return None
    short = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", baseline_rev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tree = fleet.checkout(baseline_rev)
    for mode in GATEWAY_SLUGS:
        if mode in only:
            backend = slow if mode == "join" and slow else responder
            delay = JOIN_DELAY if mode == "join" else 0.0
            fleet.add_gateway(mode, backend, delay=delay, baseline=tree, rev=short)
    return short


def progress(message: str) -> None:
    print(f"compare: {message}", file=sys.stderr, flush=True)


Load = tuple[str, Callable[[Target], LoadSpec]]  # (shape name, the spec it sends a target)


def interleaved(
    targets: Sequence[Target], repeat: int, loads: Sequence[Load]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """``repeat`` rounds, each every target (order rotated per round) with every load: all
    runs, and one summary row per load and target."""
    runs: list[dict[str, Any]] = []
    pooled: dict[tuple[str, str], list[int]] = {}
    for r in range(repeat):
        for order, target in enumerate(rotate(targets, r)):
            for name, spec_for in loads:
                row, lat = measure(target, spec_for(target))
                row.update(shape=name, repeat=r, order=order)
                runs.append(row)
                pooled.setdefault((target.slug, name), []).extend(lat)
                progress(
                    f"round {r + 1}/{repeat} {target.slug} {name}:"
                    f" {row['calls_per_s']:,.0f} calls/s,"
                    f" proxy {row['proxy_cpu_us_per_call']} µs/call,"
                    f" generator {row['generator_cpu_us_per_call']} µs/call,"
                    f" p99 {row['latency_ms'].get('p99')} ms"
                )
    summary = {
        name: {
            t.slug: summarise(
                [x for x in runs if x["target"] == t.slug and x["shape"] == name],
                pooled[(t.slug, name)],
            )
            for t in targets
        }
        for name, _ in loads
    }
    return runs, summary


def closed_loads(args: argparse.Namespace) -> list[Load]:
    def spec_for(shape: Shape) -> Callable[[Target], LoadSpec]:
        return lambda target: LoadSpec(
            connections=shape.connections,
            depth=shape.depth,
            seconds=args.seconds * shape.share,
            warmup=args.warmup,
            hot=target.hot,
        )

    return [(shape.slug, spec_for(shape)) for shape in args.shapes]


def open_loop_phase(
    args: argparse.Namespace, targets: Sequence[Target], sync: dict[str, Any]
) -> dict[str, Any]:
    """Open loop at OPEN_FRACTIONS of the passthrough gateway's ``sync`` calls/s (or of the
    first target's, without one), the same rate for every target."""
    capacity_from = next((s for s in ("passthrough", "direct", *sync) if s in sync), None)
    if capacity_from is None or args.open_repeat == 0:
        return {}
    capacity = sync[capacity_from]["calls_per_s"]
    rates = {f"{int(f * 100)}%": round(f * capacity) for f in OPEN_FRACTIONS}

    def spec_for(rate: int) -> Callable[[Target], LoadSpec]:
        return lambda target: LoadSpec(
            connections=OPEN_CONNECTIONS,
            depth=OPEN_DEPTH,
            rate=rate,
            seconds=args.seconds,
            warmup=args.warmup,
            hot=target.hot,
        )

    open_targets = [t for t in targets if t.slug not in NOT_OPEN]
    loads = [(f"open {name}", spec_for(rate)) for name, rate in rates.items()]
    runs, summary = interleaved(open_targets, args.open_repeat, loads)
    return {
        "capacity_from": capacity_from,
        "capacity_calls_per_s": capacity,
        "rates": rates,
        "connections": OPEN_CONNECTIONS,
        "max_in_flight_per_connection": OPEN_DEPTH,
        "summary": {name.removeprefix("open "): rows for name, rows in summary.items()},
        "runs": runs,
    }


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    raise_fd_limit()
    load_before = round(os.getloadavg()[0], 2)
    started = time.monotonic()
    with Fleet() as fleet:
        baseline = start_fleet(fleet, args.only, args.baseline_rev)
        targets = fleet.targets
        runs, summary = interleaved(targets, args.repeat, closed_loads(args))
        open_loop = open_loop_phase(args, targets, summary["sync"]) if "sync" in summary else {}
        described = [
            {
                "slug": t.slug,
                "label": t.label,
                "hot_key": t.hot,
                "backend_delay_s": t.backend_delay,
                "setup": t.setup,
            }
            for t in targets
        ]
        skipped, versions = dict(fleet.skipped), dict(fleet.versions)
    return {
        "benchmark": "compare",
        "command": command,
        "machine": machine_info(),
        "load_avg_1m_before": load_before,
        "elapsed_s": round(time.monotonic() - started, 1),
        "settings": {
            "repeat": args.repeat,
            "open_repeat": args.open_repeat,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "join_backend_delay_s": JOIN_DELAY,
            "shapes": [vars_of(s) for s in args.shapes],
        },
        "baseline_rev": baseline,
        "targets": described,
        "skipped": skipped,
        "versions": versions,
        "summary": summary,
        "open_loop": open_loop,
        "runs": runs,
    }


def vars_of(shape: Shape) -> dict[str, Any]:
    return {
        "slug": shape.slug,
        "title": shape.title,
        "connections": shape.connections,
        "depth": shape.depth,
        "seconds_share": shape.share,
    }


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.compare_report import render

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeat", type=int, default=3, help="closed-loop rounds over all targets")
    parser.add_argument("--open-repeat", type=int, default=2, help="open-loop rounds (0: none)")
    parser.add_argument("--seconds", type=float, default=1.5, help="recorded window of a sync run")
    parser.add_argument("--warmup", type=float, default=0.3, help="unrecorded seconds per run")
    parser.add_argument(
        "--baseline-rev", metavar="REV", help="also run the gateway of this git revision"
    )
    parser.add_argument("--only", default=",".join(ALL_TARGETS), help="comma list of targets")
    all_shapes = ",".join(s.slug for s in SHAPES)
    parser.add_argument("--shapes", default=all_shapes, help="comma list of closed-loop loads")
    args = parser.parse_args(argv)
    args.only = [t for t in args.only.split(",") if t]
    wanted = [t for t in args.shapes.split(",") if t]
    args.shapes = [s for s in SHAPES if s.slug in wanted]
    if len(args.shapes) != len(wanted) or not wanted:
        parser.error(f"--shapes: choose from {all_shapes}")
    known = (*ALL_TARGETS, *OPTIONAL_TARGETS)
    unknown = set(args.only) - set(known)
    if unknown:
        parser.error(
            f"unknown target(s) {', '.join(sorted(unknown))}; choose from {', '.join(known)}"
        )
    if args.repeat < 1 or args.seconds <= 0 or args.open_repeat < 0 or args.warmup < 0:
        parser.error("need --repeat >= 1, --seconds > 0, --open-repeat >= 0, --warmup >= 0")
    stop_children_on_sigterm()
    command = (
        f"python -m benchmarks.compare --repeat {args.repeat}"
        f" --open-repeat {args.open_repeat} --seconds {args.seconds:g}"
    )
    if args.warmup != parser.get_default("warmup"):
        command += f" --warmup {args.warmup:g}"
    if args.baseline_rev:
        command += f" --baseline-rev {args.baseline_rev}"
    if args.only != list(ALL_TARGETS):
        command += f" --only {','.join(args.only)}"
    if len(args.shapes) != len(SHAPES):
        command += f" --shapes {','.join(s.slug for s in args.shapes)}"
    result = run(args, command)
    print(json.dumps(result, sort_keys=True) if args.json else render(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
