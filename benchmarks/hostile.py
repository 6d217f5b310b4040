"""Hostile-client soak: legit clients beside hostile ones against a real gateway.

    python -m benchmarks.hostile [--seconds 120] [--quiet-seconds 10] [--rate CALLS_PER_S]
        [--connections 16] [--depth 2] [--hostile-connections 8] [--kinds mutated,partial,...]
        [--partial-bytes 1048576] [--bomb-transforms 2000] [--json]

Starts ``gateway example-backend`` and ``gateway serve`` in front of it (passthrough, the
defaults), then

1. a *quiet* run: the legit load alone for ``--quiet-seconds`` (the latency baseline);
2. the *hostile* run: the hostile clients of :mod:`benchmarks.hostile_clients`, in a process
   of their own, and after a ``--head-start`` (2 s) the same legit load for ``--seconds``.

The legit load is :mod:`benchmarks.rawload`'s (closed loop: ``--depth`` calls in flight on
each of ``--connections``; ``--rate``: open loop at that rate), each call a distinct
argument, every reply checked to be exactly its own call's answer. Make ``--seconds`` long
enough for >= 100k legit calls at the throughput the machine gives (the report counts them).

Reported: legit calls lost (connection closed or drain timed out), failed (answered with an
EXCEPTION message), crossed (answered with anything else that is not its own answer),
unmatched (of those, replies whose seqid is no call in flight), p99 latency against the quiet
run, the gateway's peak RSS (sampled every 0.2 s) and what the hostile clients saw. Nothing
is asserted: a benchmark reports (see docs/fuzz-notes.md for the figures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

from benchmarks.common import raise_fd_limit, rss_kib, stop_children_on_sigterm
from benchmarks.hostile_clients import KINDS, HostileSpec, run_hostile
from benchmarks.rawload import LoadResult, LoadSpec, run_load
from gateway.processes import start_example_backend, start_gateway


def _hostile_process(spec: HostileSpec, gateway_pid: int, stop: Event, out: Connection) -> None:
    """The hostile process: every kind in a thread, plus the gateway's RSS sampler."""
    done = threading.Event()
    peak = [0]

    def sample() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError, ValueError):  # it may have exited
                peak[0] = max(peak[0], rss_kib(gateway_pid))
            done.wait(0.2)

    def watch() -> None:
        stop.wait()
        done.set()

    threads = [threading.Thread(target=f, daemon=True) for f in (sample, watch)]
    for thread in threads:
        thread.start()
    tallies = run_hostile(spec, done, lambda: out.send("started"))
    out.send({"tallies": tallies, "gateway_rss_peak_kib": peak[0]})


def _legit(host: str, port: int, args: argparse.Namespace, seconds: float, tag: str) -> LoadResult:
    spec = LoadSpec(
        connections=args.connections,
        depth=args.depth,
        rate=args.rate,
        seconds=seconds,
        warmup=1.0,
        tag=tag,
        drain_timeout=args.drain_timeout,
    )
    return run_load(host, port, spec)


def _error_counters(admin_port: int) -> dict[str, float]:
    """The gateway's non-zero error-like counters, labels kept (what it made of the attack)."""
    url = f"http://127.0.0.1:{admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    # Not splitlines(): a label value may hold a client's \x1c or \u2028, which only \n ends.
    for line in text.split("\n"):
        name, _, value = line.rpartition(" ")
        if not line.startswith("gateway_") or "_bucket" in name or float(value) == 0:
            continue
        if any(word in name for word in ("error", "malformed", "closed", "refused", "drop")):
            out[name] = float(value)
    return out


def _summary(result: LoadResult) -> dict[str, Any]:
    return {
        "calls": result.all_ok + result.all_wrong + result.lost + result.not_sent,
        "ok": result.all_ok,
        "lost": result.lost,
        "failed": result.all_failed,  # answered with an error
        "crossed": result.all_wrong - result.all_failed,  # answered with another reply
        "unmatched": result.unmatched,
        "not_sent": result.not_sent,
        "lost_connections": result.lost_connections,
        "calls_per_s": round(result.calls_per_s),
        "latency_ms": result.latency_ms,
        "wrong_samples": result.wrong_samples,
    }


def soak(args: argparse.Namespace) -> dict[str, Any]:
    backend = start_example_backend()
    try:
        gateway = start_gateway(*args.gateway_arg, backend=backend.address, admin=True)
        try:
            return _soak(args, gateway.host, gateway.port, gateway.pid, gateway.admin_port)
        finally:
            gateway.stop()
    finally:
        backend.stop()


def _soak(
    args: argparse.Namespace, host: str, port: int, pid: int, admin_port: int | None
) -> dict[str, Any]:
    quiet = _legit(host, port, args, args.quiet_seconds, "q")
    rss_quiet = rss_kib(pid)
    spec = HostileSpec(
        host,
        port,
        kinds=tuple(args.kinds),
        connections=args.hostile_connections,
        partial_bytes=args.partial_bytes,
        bomb_transforms=args.bomb_transforms,
    )
    ctx = multiprocessing.get_context("spawn")  # not fork: a test runner may hold threads
    stop = ctx.Event()
    receive, send = ctx.Pipe(duplex=False)
    hostile = ctx.Process(target=_hostile_process, args=(spec, pid, stop, send), daemon=True)
    hostile.start()
    try:
        if not receive.poll(60.0) or receive.recv() != "started":
            raise RuntimeError("the hostile clients did not start")
        time.sleep(args.head_start)  # the hostile clients settle in first
        loaded = _legit(host, port, args, args.seconds, "l")
    finally:
        stop.set()
        report: dict[str, Any] = {"tallies": {}, "gateway_rss_peak_kib": 0}
        if receive.poll(30.0):
            report = receive.recv()
        hostile.join(10.0)
        if hostile.is_alive():
            hostile.kill()
            hostile.join()
    counters = _error_counters(admin_port) if admin_port else {}
    quiet_p99 = quiet.latency_ms.get("p99")
    loaded_p99 = loaded.latency_ms.get("p99")
    return {
        "args": dict(vars(args)),
        "quiet": _summary(quiet),
        "hostile": _summary(loaded),
        "p99_ratio": round(loaded_p99 / quiet_p99, 2) if quiet_p99 and loaded_p99 else None,
        "gateway_rss_quiet_kib": rss_quiet,
        "gateway_rss_peak_kib": max(report["gateway_rss_peak_kib"], rss_quiet),
        "hostile_clients": report["tallies"],
        "gateway_error_counters": counters,
    }


def _print(report: dict[str, Any]) -> None:
    q, h = report["quiet"], report["hostile"]
    print(f"legit calls under attack: {h['calls']:,} ({h['calls_per_s']:,}/s)")
    print(
        f"  lost {h['lost']}, failed {h['failed']}, crossed {h['crossed']}, unmatched "
        f"{h['unmatched']}, not sent {h['not_sent']}, connections lost {h['lost_connections']}"
    )
    print(f"  latency ms quiet {q['latency_ms']}")
    print(f"  latency ms hostile {h['latency_ms']}")
    print(f"  p99 hostile / quiet: {report['p99_ratio']}")
    print(
        f"gateway RSS: quiet {report['gateway_rss_quiet_kib'] / 1024:.1f} MiB, peak "
        f"{report['gateway_rss_peak_kib'] / 1024:.1f} MiB"
    )
    for kind, tally in report["hostile_clients"].items():
        print(f"hostile {kind}: {tally}")
    for sample in h["wrong_samples"]:
        print(f"  wrong reply: {sample}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hostile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=120.0, help="legit load under attack")
    parser.add_argument("--quiet-seconds", type=float, default=10.0, help="legit load alone")
    parser.add_argument(
        "--rate", type=float, help="open loop: legit calls/s in all (default: closed loop)"
    )
    parser.add_argument("--connections", type=int, default=16, help="legit connections")
    parser.add_argument("--depth", type=int, default=2, help="legit calls in flight per conn")
    parser.add_argument("--hostile-connections", type=int, default=8)
    parser.add_argument("--head-start", type=float, default=2.0, help="hostile clients first")
    parser.add_argument("--kinds", type=lambda s: s.split(","), default=list(KINDS))
    parser.add_argument("--partial-bytes", type=int, default=1 << 20)
    parser.add_argument("--bomb-transforms", type=int, default=2000)
    parser.add_argument(
        "--gateway-arg", action="append", default=[], help="extra `gateway serve` argument"
    )
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="for the last replies")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop_children_on_sigterm()
    raise_fd_limit()
    report = soak(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
