"""A cheap Thrift load generator: one thread, one epoll loop, raw non-blocking sockets.

    python -m benchmarks.rawload --target 127.0.0.1:9090 [--connections 64] [--depth 1]
        [--rate CALLS_PER_S] [--seconds 2] [--warmup 0.3] [--method alertSupervisor|getPoem]
        [--hot] [--protocol binary|compact] [--transport framed|buffered] [--json]

Closed loop (no ``--rate``): every connection keeps ``--depth`` calls outstanding; a reply
sends that slot's next call at once (``--depth 1`` is a synchronous Thrift client per
connection). Open loop (``--rate``): calls are due at a fixed rate over all connections,
round-robin, whatever the replies do; each latency runs from the call's due time, so a slow
target cannot hide its queue (no coordinated omission). ``--depth`` then caps the calls in
flight per connection; calls due beyond that wait in the generator (their wait counts).

Calls are pre-encoded by the stock thrift library (:mod:`benchmarks.wire`); a call costs a
seqid patched into its slot's buffer, the reply a ``startswith`` against the expected bytes.
Slot ``i`` (of ``connections x depth``) always sends argument ``i`` (``--hot``: all send the
same), so no two calls in flight share a key; every reply must carry the seqid of a call in
flight on its connection AND exactly that call's answer, or it counts as wrong.

Timeline: connect, ``--warmup`` seconds unrecorded, ``--seconds`` recorded (throughput,
latency of the calls that complete in the window, the generator's own CPU: utime+stime of
its process), then the calls still in flight drain (checked, not timed).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Sequence

from benchmarks.loadspec import LoadResult, LoadSpec, WindowHook, percentiles
from benchmarks.rawloop import Loop, connect
from benchmarks.wire import METHODS, PROTOCOLS, TRANSPORTS, build_callset

__all__ = ["LoadResult", "LoadSpec", "main", "percentiles", "run_load"]


def run_load(
    host: str, port: int, spec: LoadSpec, window_hook: WindowHook | None = None
) -> LoadResult:
    """One run against ``host:port``; ``window_hook`` is called as the recorded window opens
    and closes (e.g. to read other processes' CPU), its readings kept in ``window_marks``."""
    if spec.connections < 1 or spec.depth < 1 or spec.seconds <= 0 or spec.warmup < 0:
        raise ValueError("need connections, depth >= 1, seconds > 0, warmup >= 0")
    slots = spec.connections * spec.depth
    width = len(str(slots - 1))
    arguments = (
        [f"{spec.tag}-hot"] if spec.hot else [f"{spec.tag}-{i:0{width}d}" for i in range(slots)]
    )
    callset = build_callset(spec.method, spec.protocol, spec.transport, arguments)
    conns = connect(host, port, spec.connections, spec.connect_timeout)
    gc.collect()
    gc.disable()  # the loop allocates no cycles; a collection would land in a random call
    try:
        return Loop(callset, spec, conns, window_hook).run()
    finally:
        gc.enable()
        for conn in conns:
            conn.sock.close()


def parse_target(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.rawload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--target", type=parse_target, required=True, metavar="HOST:PORT")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--depth", type=int, default=1, help="calls in flight per connection")
    parser.add_argument("--rate", type=float, help="open loop: calls per second in all")
    parser.add_argument("--seconds", type=float, default=2.0, help="recorded window")
    parser.add_argument("--warmup", type=float, default=0.3, help="unrecorded seconds first")
    parser.add_argument("--method", choices=list(METHODS), default="alertSupervisor")
    parser.add_argument("--hot", action="store_true", help="every call the same argument")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="binary")
    parser.add_argument("--transport", choices=TRANSPORTS, default="framed")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    spec = LoadSpec(
        connections=args.connections,
        depth=args.depth,
        rate=args.rate,
        seconds=args.seconds,
        warmup=args.warmup,
        method=args.method,
        hot=args.hot,
        protocol=args.protocol,
        transport=args.transport,
    )
    host, port = args.target
    result = run_load(host, port, spec)
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True))
    else:
        lat = result.latency_ms
        print(
            f"{spec.shape()}: {result.calls_per_s:,.0f} calls/s, ok {result.ok}, errors"
            f" {result.errors}; latency ms p50 {lat.get('p50')} p99 {lat.get('p99')} p99.9"
            f" {lat.get('p99.9')}; generator CPU {result.generator_cpu_us_per_call} µs/call"
        )
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
