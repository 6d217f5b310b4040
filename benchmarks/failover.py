"""How fast a dead leader is replaced, and what an idle node costs Redis (issue 9, sessions).

    python -m benchmarks.failover [--runs 10] [--delay 1.0] [--json]

Starts a redis-server, a cheap backend in this process (benchmarks.responder, answering after
``--delay`` seconds and recording when each call arrives) and three ``gateway serve`` nodes
with the default Redis timings (``lease_ttl`` 5 s, ``session_ttl`` 1 s). Each run:

1. a client asks node A ``alertSupervisor("failover-<run>")``: A leads, the backend has it;
2. clients on nodes B and C make the same call: they follow A;
3. ``kill -9`` A, 0.3 s later plus a random part of its 0.4 s session renewal cycle;
4. measured: **takeover** = when the backend receives the call again (a follower took the
   lease over) minus the kill; when the followers are answered; backend calls for the key;
5. A is started again (a new process: a new session) for the next run.

Then one node is left idle and Redis ``MONITOR`` counts the commands it sends for 5 s.
Every process is stopped by PID, also on failure or Ctrl-C. Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from thrift.transport.TTransport import TTransportException

from benchmarks.common import stop_children_on_sigterm
from benchmarks.redisstats import CommandLog, local_ports_to
from benchmarks.responder import Responder
from benchmarks.wire import expected_result
from clients.sync_client import ExampleClient
from gateway.localredis import RedisServer
from gateway.processes import GatewayProcess, start_gateway, wait_for_redis_mode

KILL_AFTER = 0.3  # seconds between the followers' calls and the kill


def call(address: tuple[str, int], message: str, timeout: float = 30.0) -> tuple[bool, float]:
    """One blocking alertSupervisor call with the project's sync client: (answered with the
    right reply, when answered)."""
    with ExampleClient(*address, timeout=timeout) as client:
        right = client.alert(message) == expected_result("alertSupervisor", message)
    return right, time.monotonic()


class Backend:
    """The responder on a daemon thread of this process (its clock is ours)."""

    def __init__(self, delay: float) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self.responder = Responder(listener, delay, record=True)
        threading.Thread(target=self.responder.serve, daemon=True).start()

    def arrivals(self, message: str) -> list[float]:
        needle = message.encode()
        return [t for t, key in list(self.responder.arrivals or []) if needle in key]


def run(runs: int, delay: float, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        redis = stack.enter_context(RedisServer())
        backend = Backend(delay)
        config = Path(tmp) / "gateway.toml"
        address = f"127.0.0.1:{backend.port}"
        config.write_text(
            f'[gateway]\ndrain_timeout = 5\n[backends.default]\naddress = "{address}"\n'
        )
        nodes: dict[str, GatewayProcess] = {}

        def start(node_id: str) -> GatewayProcess:
            node = start_gateway(config=config, node_id=node_id, redis=redis.url, admin=True)
            stack.callback(node.stop)
            nodes[node_id] = node
            return node

        for node_id in ("a", "b", "c"):
            start(node_id)
        wait_for_redis_mode(list(nodes.values()), "cluster")
        results: list[dict[str, Any]] = []
        for i in range(runs):
            message = f"failover-{i:04d}"
            a, b, c = nodes["a"], nodes["b"], nodes["c"]
            leader = threading.Thread(target=_ignore, args=(call, (a.host, a.port), message))
            leader.start()
            _wait(lambda m=message: len(backend.arrivals(m)) == 1)
            answers: list[tuple[bool, float]] = []
            followers = [
                threading.Thread(target=_answer, args=(answers, (n.host, n.port), message))
                for n in (b, c)
            ]
            for thread in followers:
                thread.start()
            # At a random moment of the leader's 0.4 s session renewal cycle, as a crash is.
            time.sleep(KILL_AFTER + rng.uniform(0.0, 0.4))
            killed = time.monotonic()
            a.kill()
            for thread in followers:
                thread.join(timeout=30)
            leader.join(timeout=5)
            arrivals = backend.arrivals(message)
            results.append(
                {
                    "takeover_s": round(arrivals[1] - killed, 4) if len(arrivals) > 1 else None,
                    "answered": sum(ok for ok, _ in answers),
                    "followers": 2,
                    "answered_after_kill_s": round(max(t for _, t in answers) - killed, 4)
                    if answers
                    else None,
                    "backend_calls": len(arrivals),
                }
            )
            start("a")
            wait_for_redis_mode(list(nodes.values()), "cluster")
        idle = _idle_cost(redis, nodes["b"])
    takeovers: list[float] = [t for r in results if (t := r["takeover_s"]) is not None]
    return {
        "runs": results,
        "takeover_p50_s": statistics.median(takeovers) if takeovers else None,
        "takeover_max_s": max(takeovers) if takeovers else None,
        "every_follower_answered": all(r["answered"] == r["followers"] for r in results),
        "max_backend_calls": max(r["backend_calls"] for r in results),
        "backend_delay_s": delay,
        "idle_commands_per_s": idle["per_s"],
        "idle_commands": idle["by_command"],
    }


def _idle_cost(redis: RedisServer, node: GatewayProcess, seconds: float = 5.0) -> dict[str, Any]:
    time.sleep(1.0)
    ports = local_ports_to(node.pid, redis.port)
    log = CommandLog(redis.port).start()
    time.sleep(seconds)
    commands = log.stop()
    mine = Counter(
        c.name for c in commands if c.client != "lua" and int(c.client.rpartition(":")[2]) in ports
    )
    return {"per_s": round(sum(mine.values()) / seconds, 2), "by_command": dict(mine)}


def _ignore(fn: Any, *args: Any) -> None:
    # The leader's node is killed under this caller.
    with contextlib.suppress(OSError, TTransportException):
        fn(*args)


def _answer(answers: list[tuple[bool, float]], address: tuple[str, int], message: str) -> None:
    answers.append(call(address, message))


def _wait(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.005)


def render(report: dict[str, Any]) -> str:
    lines = [
        "| run | takeover after kill, s | followers answered | answered after kill, s |"
        " backend calls |",
        "|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(report["runs"]):
        lines.append(
            f"| {i} | {r['takeover_s']} | {r['answered']}/{r['followers']} | "
            f"{r['answered_after_kill_s']} | {r['backend_calls']} |"
        )
    lines += [
        "",
        f"takeover p50 {report['takeover_p50_s']} s, max {report['takeover_max_s']} s; "
        f"every follower answered: {report['every_follower_answered']}; "
        f"backend calls per run at most {report['max_backend_calls']} "
        f"(backend delay {report['backend_delay_s']} s)",
        f"idle node: {report['idle_commands_per_s']} Redis commands/s "
        f"{json.dumps(report['idle_commands'], sort_keys=True)}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.failover", description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--delay", type=float, default=1.0, help="backend delay, seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    stop_children_on_sigterm()  # benchmarks.run's time limit: stop every process by PID
    report = run(args.runs, args.delay)
    print(json.dumps(report) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
