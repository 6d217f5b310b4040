"""The backend connection pool against in-order servers (issue 21).

``python -m benchmarks.pool [--kinds example,thriftpy2,apache] [--json]``

1. **CPU per call and backend connections in use**, one call per connection (the default)
   vs ``pipelining = true``, in front of the in-order example backend: ``--clients``
   sequential callers (one connection each, passthrough) for ``--seconds``; the gateway's
   and the backend's CPU seconds per call (from /proc), the backend connections open (the
   pool's gauge, sampled), calls/s and latency.
2. **The issue's three figures**, directly, through a default gateway and through a gateway
   with ``pipelining = true`` (what the defaults were before): fast calls' p99 beside slow
   callers, 16 distinct slow calls at once, and the other callers' worst call and p99
   beside one client's 3,000-call burst (beside their quiet p99 directly).

Nothing here asserts: tests/test_pool_isolation.py does, with generous bounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import cpu_seconds, gateway_counters, machine_info, markdown_table
from benchmarks.inorder_servers import generate_apache
from benchmarks.pool_scenarios import (
    Caller,
    Target,
    backend,
    burst_beside_sequential,
    fast_beside_slow,
    gateway_process,
    percentile,
    quiet,
    slow_at_once,
)
from gateway.processes import ExampleBackend, example_backend_argv, start_process

MODES = {"pooled": "", "pipelined": "pipelining = true"}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def cpu_per_call(mode: str, clients: int, seconds: float, delay: float) -> dict[str, Any]:
    """Sequential callers through a gateway in ``mode`` in front of the in-order example
    backend: CPU per call (gateway, backend), backend connections open, calls/s, latency."""
    argv = [*example_backend_argv(delay=delay), "--slow-delay", "1"]
    with (
        ExampleBackend.from_process(start_process(argv)) as be,
        tempfile.TemporaryDirectory() as tmp,
        gateway_process(Target(be.host, be.port), Path(tmp), MODES[mode], admin=True) as gw,
    ):
        assert gw.admin_port is not None
        target = Target(gw.host, gw.port)
        latencies: list[float] = []
        stop = threading.Event()
        peak = [0.0]

        def call_loop(i: int) -> None:
            caller = Caller(target)
            n = 0
            while not stop.is_set():
                latencies.append(caller.alert(f"c{i}-{n}"))
                n += 1
            caller.close()

        threads = [threading.Thread(target=call_loop, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # connections opened, warm
        latencies.clear()
        gw_cpu, be_cpu = cpu_seconds(gw.pid), cpu_seconds(be.pid)
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            time.sleep(0.2)
            open_now = gateway_counters(gw.admin_port).get("backend_connections", 0.0)
            peak[0] = max(peak[0], open_now)
        calls = len(latencies)
        elapsed = time.perf_counter() - started
        gw_used, be_used = cpu_seconds(gw.pid) - gw_cpu, cpu_seconds(be.pid) - be_cpu
        stop.set()
        for thread in threads:
            thread.join(30)
    return {
        "mode": mode,
        "calls_per_s": round(calls / elapsed),
        "gateway_cpu_us_per_call": round(gw_used / calls * 1e6, 1),
        "backend_cpu_us_per_call": round(be_used / calls * 1e6, 1),
        "backend_connections_peak": int(peak[0]),
        "p50_ms": _ms(percentile(latencies, 50)),
        "p99_ms": _ms(percentile(latencies, 99)),
    }


def figures(kind: str, fast: float, slow: float, gen_dir: Path | None) -> dict[str, Any]:
    """The issue's three figures against one in-order server kind."""
    out: dict[str, Any] = {"kind": kind}
    with backend(kind, fast, slow, gen_dir) as server:
        out["direct"] = {
            "fast_p99_ms": _ms(percentile(fast_beside_slow(server), 99)),
            "slow16_s": round(slow_at_once(server), 2),
            "quiet_p99_ms": _ms(percentile(quiet(server), 99)),
        }
        for mode, extra in MODES.items():
            with (
                tempfile.TemporaryDirectory() as tmp,
                gateway_process(server, Path(tmp), extra) as gw,
            ):
                target = Target(gw.host, gw.port)
                others, took = burst_beside_sequential(target)
                out[mode] = {
                    "fast_p99_ms": _ms(percentile(fast_beside_slow(target), 99)),
                    "slow16_s": round(slow_at_once(target), 2),
                    "burst_others_worst_ms": _ms(max(others)),
                    "burst_others_p99_ms": _ms(percentile(others, 99)),
                    "burst_s": round(took, 2),
                }
    return out


def render(report: dict[str, Any]) -> str:
    rows = [
        [r["mode"], r["calls_per_s"], r["gateway_cpu_us_per_call"], r["backend_cpu_us_per_call"],
         r["backend_connections_peak"], r["p50_ms"], r["p99_ms"]]
        for r in report["cpu"]
    ]  # fmt: skip
    headers = ["mode", "calls/s", "gateway CPU µs/call", "backend CPU µs/call",
               "backend connections (peak)", "p50 ms", "p99 ms"]  # fmt: skip
    parts = [
        f"CPU per call, {report['clients']} sequential callers, in-order example backend "
        f"({report['delay'] * 1000:g} ms calls), {report['seconds']:g} s:",
        "",
        markdown_table(headers, rows),
        "",
        f"The issue's figures ({report['fast'] * 1000:g} ms calls, "
        f"{report['slow']:g} s slow calls):",
        "",
    ]
    rows = []
    for f in report["figures"]:
        d, pooled, piped = f["direct"], f["pooled"], f["pipelined"]
        rows.append([f["kind"], "fast p99 beside slow (ms)", d["fast_p99_ms"],
                     pooled["fast_p99_ms"], piped["fast_p99_ms"]])  # fmt: skip
        rows.append([f["kind"], "16 slow calls at once (s)", d["slow16_s"],
                     pooled["slow16_s"], piped["slow16_s"]])  # fmt: skip
        rows.append([f["kind"], "others' worst beside a 3,000 burst (ms)",
                     f"quiet p99 {d['quiet_p99_ms']}", pooled["burst_others_worst_ms"],
                     piped["burst_others_worst_ms"]])  # fmt: skip
        rows.append([f["kind"], "others' p99 beside the burst (ms)",
                     f"quiet p99 {d['quiet_p99_ms']}", pooled["burst_others_p99_ms"],
                     piped["burst_others_p99_ms"]])  # fmt: skip
        rows.append([f["kind"], "the burst itself (s)", "-", pooled["burst_s"],
                     piped["burst_s"]])  # fmt: skip
    parts.append(
        markdown_table(
            ["server", "figure", "directly", "gateway (defaults)", "gateway, pipelining = true"],
            rows,
        )
    )
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kinds", default="example,thriftpy2,apache")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--delay", type=float, default=0.005, help="CPU runs' call delay")
    parser.add_argument("--fast", type=float, default=0.02)
    parser.add_argument("--slow", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"machine": machine_info(), **vars(args)}
    report["cpu"] = [cpu_per_call(m, args.clients, args.seconds, args.delay) for m in MODES]
    with tempfile.TemporaryDirectory() as tmp:
        gen_dir = generate_apache(Path(tmp)) if shutil.which("thrift") else None
        kinds = [k for k in args.kinds.split(",") if k != "apache" or gen_dir is not None]
        report["figures"] = [figures(k, args.fast, args.slow, gen_dir) for k in kinds]
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
