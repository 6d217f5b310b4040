"""Thundering-herd load driver: many concurrent clients asking a few identical questions.

    python -m clients.herd --targets 127.0.0.1:9090,127.0.0.1:9091 \\
        --clients 500 --keys 5 --rounds 3 [--poems 3] [--protocols binary,compact] [--json]

Client ``i`` holds one framed connection to ``targets[i % len(targets)]`` speaking
``protocols[i % len(protocols)]``. In round ``r`` every client concurrently calls
``alertSupervisor(f"herd-r{r}-k{i % keys}")`` (and ``getPoem(f"poem-{i % poems}")`` when
``poems > 0``); the next round starts once every reply is in. Every reply is checked against
its own request, which is what catches a gateway handing one caller another caller's answer.

From Python, inside a running reactor: ``run_herd(targets, clients, keys, rounds) -> Deferred``
firing with the summary dict that ``--json`` prints.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, task
from twisted.python.failure import Failure

from clients.calls import (
    ALERT,
    GET_POEM,
    Method,
    describe_error,
    parse_target,
)
from clients.calls import protocol_factory as make_protocol_factory
from clients.pipelined import PipelinedConnection, close_all
from clients.pipelined import connect as connect_to


class Tally:
    """Outcome counts and latencies for one method (or all of them)."""

    def __init__(self) -> None:
        self.calls = self.ok = self.wrong_replies = self.errors = 0
        self.latencies: list[float] = []
        self.error_kinds: Counter[str] = Counter()
        self.wrong_samples: list[dict[str, str]] = []

    def record(self, expected: str, got: Any, exact: bool, latency: float | None) -> None:
        """``latency`` None: the call was never sent (no connection), so it has none."""
        self.calls += 1
        if latency is not None:
            self.latencies.append(latency)
        if isinstance(got, Failure | BaseException):
            self.errors += 1
            self.error_kinds[error_kind(got)] += 1
        elif isinstance(got, str) and (got == expected if exact else expected in got):
            self.ok += 1
        else:
            self.wrong_replies += 1
            if len(self.wrong_samples) < 5:
                self.wrong_samples.append({"expected": expected, "got": repr(got)[:200]})

    def summary(self) -> dict[str, Any]:
        return {
            "client_calls": self.calls,
            "ok": self.ok,
            "wrong_replies": self.wrong_replies,
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds.most_common()),
            "latency_ms": latency_summary(self.latencies),
            "wrong_samples": self.wrong_samples,
        }


def error_kind(failure: Failure | BaseException) -> str:
    """A bucket name for a failed call; digits are blanked so ids and ports share a bucket."""
    exc = failure.value if isinstance(failure, Failure) else failure
    if isinstance(exc, defer.TimeoutError):
        return "timeout"
    text = describe_error(exc)
    return re.sub(r"\d+", "N", text)[:160]


def latency_summary(latencies: Sequence[float]) -> dict[str, float]:
    """Nearest-rank p50/p99 and the maximum, in milliseconds."""
    if not latencies:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(latencies)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000, 3)

    return {"p50": rank(0.50), "p99": rank(0.99), "max": round(ordered[-1] * 1000, 3)}


def check_arguments(
    clients: int, keys: int, rounds: int, poems: int, protocols: Sequence[str]
) -> None:
    """Raise ``ValueError`` for counts out of range or an unknown protocol name."""
    if clients < 1 or keys < 1 or rounds < 0 or poems < 0 or not protocols:
        raise ValueError(
            "need clients >= 1, keys >= 1, rounds >= 0, poems >= 0 and at least one protocol"
        )
    for name in protocols:
        make_protocol_factory(name)  # unknown names fail here, not once per client


@defer.inlineCallbacks
def run_herd(
    targets: Sequence[str | tuple[str, int]],
    clients: int,
    keys: int,
    rounds: int,
    *,
    poems: int = 0,
    protocols: Sequence[str] = ("binary",),
    multiplexed: bool = False,
    timeout: float = 30.0,
    reactor: Any = None,
) -> Any:
    """Drive the herd; fires with the summary dict (never fails for per-call errors)."""
    if reactor is None:
        from twisted.internet import reactor
    addresses = [parse_target(t) if isinstance(t, str) else t for t in targets]
    if not addresses:
        raise ValueError("need at least one target")
    check_arguments(clients, keys, rounds, poems, protocols)
    total, per_method = Tally(), {ALERT.name: Tally()}
    if poems:
        per_method[GET_POEM.name] = Tally()
    conns: list[PipelinedConnection | None] = [None] * clients

    def timed_call(i: int, method: Method, expected: str, exact: bool, **fields: Any) -> Any:
        started = time.perf_counter()

        def done(result: Any) -> None:
            latency = time.perf_counter() - started
            for tally in (total, per_method[method.name]):
                tally.record(expected, result, exact, latency)

        conn = conns[i]
        assert conn is not None, "client_round connects first"
        return conn.call(method, timeout, **fields).addBoth(done)

    connect_errors: list[BaseException | None] = [None] * clients
    every_conn: list[PipelinedConnection] = []  # including ones replaced after a reconnect

    @defer.inlineCallbacks
    def connect(i: int) -> Any:
        host, port = addresses[i % len(addresses)]
        try:
            conn = yield connect_to(
                reactor, host, port, protocols[i % len(protocols)], multiplexed, timeout
            )
        except Exception as exc:
            conns[i], connect_errors[i] = None, exc
        else:
            conns[i], connect_errors[i] = conn, None
            every_conn.append(conn)

    @defer.inlineCallbacks
    def client_round(i: int, r: int) -> Any:
        conn = conns[i]
        # Reconnect a lost connection (a gateway node restarted between rounds), but do not
        # retry in round 0 what the connect phase just failed to do.
        if (conn is None or not conn.is_open) and not (r == 0 and connect_errors[i]):
            yield connect(i)
        failure = connect_errors[i]
        if failure is not None:
            for method in [ALERT, GET_POEM] if poems else [ALERT]:
                for tally in (total, per_method[method.name]):
                    tally.record("", failure, True, None)
            return
        message = f"herd-r{r}-k{i % keys}"
        calls = [timed_call(i, ALERT, "ack:" + message, True, message=message)]
        if poems:
            title = f"poem-{i % poems}"
            calls.append(timed_call(i, GET_POEM, title, False, title=title))
        yield defer.gatherResults(calls)

    # Connect everyone first so elapsed_s and latencies measure calls, not TCP handshakes.
    connect_started = time.perf_counter()
    yield defer.gatherResults([connect(i) for i in range(clients)])
    connect_s = time.perf_counter() - connect_started
    started = time.perf_counter()
    try:
        for r in range(rounds):
            yield defer.gatherResults([client_round(i, r) for i in range(clients)])
    finally:
        elapsed = time.perf_counter() - started
        yield close_all(reactor, conns)
    summary = total.summary()
    summary.update(
        stray_replies=sum(c.stray_replies for c in every_conn),
        elapsed_s=round(elapsed, 4),
        connect_s=round(connect_s, 4),
        calls_per_s=round(total.calls / elapsed, 1) if elapsed > 0 else 0.0,
        per_method={name: tally.summary() for name, tally in per_method.items()},
        clients=clients,
        rounds=rounds,
        keys=keys,
    )
    return summary


def format_summary(s: dict[str, Any]) -> str:
    lat = s["latency_ms"]
    lines = [
        f"herd: {s['client_calls']} calls from {s['clients']} clients x {s['rounds']} rounds"
        f" in {s['elapsed_s']:.3f}s ({s['calls_per_s']:.0f} calls/s)",
        f"  ok {s['ok']}, wrong replies {s['wrong_replies']}, errors {s['errors']},"
        f" stray replies {s['stray_replies']}",
        f"  latency ms: p50 {lat['p50']:.2f}  p99 {lat['p99']:.2f}  max {lat['max']:.2f}",
    ]
    lines += [f"  error x{n}: {kind}" for kind, n in s["error_kinds"].items()]
    lines += [f"  wrong: expected {w['expected']!r}, got {w['got']}" for w in s["wrong_samples"]]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clients.herd", description=__doc__.split("\n")[0])
    p.add_argument("--targets", required=True, metavar="H:P[,H:P...]")
    p.add_argument("--clients", type=int, default=100, help="concurrent connections")
    p.add_argument("--keys", type=int, default=5, help="distinct alert messages per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--poems", type=int, default=0, help="distinct getPoem titles (0: none)")
    p.add_argument("--protocols", default="binary", help="comma list: binary,compact,...")
    p.add_argument("--multiplexed", action="store_true", help="use TMultiplexedProtocol")
    p.add_argument("--timeout", type=float, default=30.0, help="per call and connect, seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: exit 0 when every reply was right (and none stray), 1 otherwise, 2 on bad
    arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        targets = [parse_target(t) for t in args.targets.split(",") if t]
        protocols = [p for p in args.protocols.split(",") if p]
        if not targets:
            raise ValueError("need at least one target")
        check_arguments(args.clients, args.keys, args.rounds, args.poems, protocols)
    except ValueError as exc:
        print(f"herd: {exc}", file=sys.stderr)
        return 2
    outcome: dict[str, Any] = {}

    @defer.inlineCallbacks
    def drive(reactor: Any) -> Any:
        outcome.update((yield run_herd(
            targets, args.clients, args.keys, args.rounds, poems=args.poems,
            protocols=protocols, multiplexed=args.multiplexed, timeout=args.timeout,
            reactor=reactor,
        )))  # fmt: skip

    try:
        task.react(drive)
    except SystemExit as exit_:
        if exit_.code:
            return int(exit_.code)
    print(json.dumps(outcome) if args.json else format_summary(outcome), flush=True)
    clean = outcome["ok"] == outcome["client_calls"] and not outcome["stray_replies"]
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
