"""A gateway cluster under a thundering herd: backend calls, follower latency, Redis round
trips, and the memory a waiting caller costs.

    python -m benchmarks.cluster [--json] [--nodes 3] [--clients 2000] [--delay 1] [--herds 3]
                                 [--waiters 2000] [--waiter-delay 4]

Setup: one redis-server, one example backend (``--delay`` seconds per call) and ``--nodes``
gateway nodes in cluster mode. Load: an in-process herd (:mod:`benchmarks.loadgen`) of
``--clients`` framed connections, round-robin over the nodes, which all call
``alertSupervisor`` with the same message at once; ``--herds`` times, a new message each.

* backend calls per herd: the backend's ``backendStats()`` before and after.
* latency per node, split into the leader's node (the one whose backend calls rose) and
  the remote followers' nodes, next to the same herd sent straight to the backend; "after
  the first reply" is a caller's finish time minus the herd's first finish.
* Redis round trips: every command the nodes sent during the herd, read through MONITOR
  (script-internal commands excluded, heartbeat/keepalive counted apart).
* memory per waiting caller: a separate node with a ``--waiter-delay`` backend; VmRSS when
  idle, with ``--waiters`` idle connections, with one call waiting on each (all on one key),
  and after the replies went out and the connections closed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, task, threads

from benchmarks.cluster_report import render, summarise
from benchmarks.common import (
    backend_stats,
    counters_delta,
    gateway_counters,
    gateway_health,
    raise_fd_limit,
    rss_kib,
    stop_children_on_sigterm,
    wait_until,
)
from benchmarks.loadgen import CallRecord, Herd
from benchmarks.redisstats import CommandLog, background, by_owner, call_path, local_ports_to
from clients.herd import latency_summary
from gateway.localredis import RedisServer
from gateway.processes import GatewayProcess, start_example_backend, start_gateway


def wait_for_cluster_mode(nodes: Sequence[GatewayProcess], timeout: float = 20.0) -> None:
    """Block until every node reports ``redis: cluster`` on /healthz."""

    def all_up() -> bool:
        return all(gateway_health(n.admin_port or 0)["redis"] == "cluster" for n in nodes)

    if not wait_until(all_up, timeout, interval=0.1):
        raise RuntimeError(f"nodes not in cluster mode after {timeout}s")


@defer.inlineCallbacks
def herd_rounds(
    reactor: Any, nodes: list[GatewayProcess], backend: str, redis_port: int, args: Any
) -> Any:
    """Run ``args.herds`` herds over the cluster; returns the per-herd and pooled figures."""
    targets = [(n.host, n.port) for n in nodes]
    herd = Herd(reactor, targets, args.clients, timeout=args.delay + 30)
    started = time.perf_counter()
    yield herd.connect()
    connect_s = time.perf_counter() - started
    owners = {port: n.node_id for n in nodes for port in local_ports_to(n.pid, redis_port)}
    rounds: list[dict[str, Any]] = []
    pooled: dict[str, list[float]] = {"leader": [], "follower": [], "leader_lag": []}
    pooled["follower_lag"], pooled["follower_minus_delay"] = [], []
    try:
        for r in range(args.herds):
            counters_before = {n.node_id: gateway_counters(n.admin_port or 0) for n in nodes}
            stats_before = backend_stats(backend)
            log = CommandLog(redis_port).start()
            records: list[CallRecord] = yield herd.fire(f"cluster-herd-{r}")
            commands = by_owner(log.stop(), owners)
            backend_calls = backend_stats(backend)["alertSupervisor"]
            backend_calls -= stats_before["alertSupervisor"]
            deltas = {
                n.node_id: counters_delta(
                    counters_before[n.node_id], gateway_counters(n.admin_port or 0)
                )
                for n in nodes
            }
            leaders = {i for i, n in enumerate(nodes) if deltas[n.node_id]["backend_calls"] > 0}
            # The first reply any caller got: the earliest sign, on the client's clock, that
            # the backend had answered (the leader's node may well be beaten to it by a
            # follower's: the leader publishes before it answers its own callers).
            first_reply = min(rec.done for rec in records)
            per_node = []
            for i, node in enumerate(nodes):
                mine = [rec for rec in records if rec.target == i]
                role = "leader" if i in leaders else "follower"
                latencies = [rec.latency for rec in mine]
                lags = [rec.done - first_reply for rec in mine]
                pooled[role] += latencies
                pooled[f"{role}_lag"] += lags
                if role == "follower":
                    pooled["follower_minus_delay"] += [x - args.delay for x in latencies]
                node_commands = commands.get(node.node_id, Counter())
                per_node.append(
                    {
                        "node": node.node_id,
                        "role": role,
                        "calls": len(mine),
                        "ok": sum(rec.ok for rec in mine),
                        "latency_ms": latency_summary(latencies),
                        "after_first_reply_ms": latency_summary(lags),
                        "redis_call_path_commands": call_path(node_commands),
                        "redis_background_commands": background(node_commands),
                        "redis_commands": dict(node_commands),
                        "counters": deltas[node.node_id],
                    }
                )
            rounds.append(
                {
                    "message": f"cluster-herd-{r}",
                    "client_calls": len(records),
                    "ok": sum(rec.ok for rec in records),
                    "backend_calls": backend_calls,
                    "leader_nodes": [nodes[i].node_id for i in sorted(leaders)],
                    "redis_call_path_commands": sum(
                        n["redis_call_path_commands"] for n in per_node
                    ),
                    "redis_script_internal_commands": sum((commands.get("lua") or {}).values()),
                    "nodes": per_node,
                }
            )
    finally:
        yield herd.close()
    return {
        "connect_s": round(connect_s, 3),
        "connect_errors": herd.connect_errors,
        "rounds": rounds,
        "pooled": pooled,
    }


@defer.inlineCallbacks
def direct_herd(reactor: Any, backend: tuple[str, int], args: Any) -> Any:
    """The same herd straight at the backend: how much of the latency above the backend's
    delay is the client's own (sending and reading thousands of calls on two cores)."""
    herd = Herd(reactor, [backend], args.clients, timeout=args.delay + 30)
    yield herd.connect()
    try:
        records: list[CallRecord] = yield herd.fire("direct-herd")
    finally:
        yield herd.close()
    latencies = [rec.latency for rec in records]
    return {
        "client_calls": len(records),
        "ok": sum(rec.ok for rec in records),
        "backend_calls": len(records),
        "latency_ms": latency_summary(latencies),
        "minus_backend_delay_ms": latency_summary([x - args.delay for x in latencies]),
    }


@defer.inlineCallbacks
def waiter_memory(reactor: Any, node: GatewayProcess, args: Any) -> Any:
    """VmRSS of ``node`` idle, with ``args.waiters`` connections, with a call waiting on each,
    and after the replies and hang-ups (KiB)."""
    herd = Herd(reactor, [(node.host, node.port)], args.waiters, timeout=args.waiter_delay + 30)
    rss = {"idle": rss_kib(node.pid)}
    yield herd.connect()
    yield task.deferLater(reactor, 0.5, lambda: None)  # let the node finish its accepts
    rss["connected"] = rss_kib(node.pid)
    calls = herd.fire("memory-herd")

    def all_waiting() -> bool:
        health = gateway_health(node.admin_port or 0)
        return int(health["in_flight"]) >= int(args.waiters)

    waiting = yield threads.deferToThread(wait_until, all_waiting, args.waiter_delay * 0.6)
    in_flight = (yield threads.deferToThread(gateway_health, node.admin_port or 0))["in_flight"]
    rss["waiting"] = rss_kib(node.pid)
    records: list[CallRecord] = yield calls
    yield herd.close()
    yield task.deferLater(reactor, 1.0, lambda: None)
    rss["after_drain"] = rss_kib(node.pid)
    n = args.waiters
    return {
        "waiters": n,
        "all_waiting_when_sampled": bool(waiting),
        "in_flight_when_sampled": in_flight,
        "ok": sum(rec.ok for rec in records),
        "rss_kib": rss,
        "bytes_per_waiter": round((rss["waiting"] - rss["idle"]) * 1024 / n),
        "bytes_per_connection": round((rss["connected"] - rss["idle"]) * 1024 / n),
        "bytes_per_waiting_call": round((rss["waiting"] - rss["connected"]) * 1024 / n),
        "after_drain_above_idle_kib": rss["after_drain"] - rss["idle"],
    }


def run(args: Any, command: str) -> dict[str, Any]:
    raise_fd_limit()
    outcome: dict[str, Any] = {}
    with RedisServer() as redis_server:
        backend = start_example_backend(delay=args.delay)
        nodes: list[GatewayProcess] = []
        memory_backend = memory_node = None
        try:
            for i in range(args.nodes):
                nodes.append(
                    start_gateway(
                        backend=backend.address,
                        redis=redis_server.url,
                        node_id=f"bench-n{i}",
                        admin=True,
                    )
                )
            wait_for_cluster_mode(nodes)
            background_per_node_s = background_rate(redis_server.port, nodes)
            memory_backend = start_example_backend(delay=args.waiter_delay)
            memory_node = start_gateway(
                backend=memory_backend.address,
                redis=redis_server.url,
                node_id="bench-mem",
                admin=True,
            )
            wait_for_cluster_mode([memory_node])

            @defer.inlineCallbacks
            def drive(reactor: Any) -> Any:
                print("cluster: herds ...", file=sys.stderr, flush=True)
                outcome["herd"] = yield herd_rounds(
                    reactor, nodes, backend.address, redis_server.port, args
                )
                print("cluster: same herd direct to the backend ...", file=sys.stderr, flush=True)
                outcome["direct"] = yield direct_herd(reactor, (backend.host, backend.port), args)
                print("cluster: memory per waiting caller ...", file=sys.stderr, flush=True)
                assert memory_node is not None
                outcome["memory"] = yield waiter_memory(reactor, memory_node, args)

            try:
                task.react(drive)
            except SystemExit as exit_:
                if exit_.code:
                    raise RuntimeError(
                        f"the benchmark's reactor exited with {exit_.code}"
                    ) from None
        finally:
            for process in [*nodes, memory_node, memory_backend, backend]:
                if process is not None:
                    process.stop()
    missing = {"herd", "direct", "memory"} - outcome.keys()
    if missing:  # the reactor was stopped early (SIGTERM, Ctrl-C)
        raise RuntimeError(f"interrupted before measuring {', '.join(sorted(missing))}")
    return summarise(args, command, outcome, background_per_node_s)


def background_rate(port: int, nodes: Sequence[GatewayProcess], seconds: float = 2.0) -> float:
    """Commands per second the idle nodes send (heartbeats, session renewals, keepalives):
    the background that the herd's Redis figures leave out.

    Counted through MONITOR by the nodes' own connections, without the commands their
    scripts run inside Redis: INFO's total_commands_processed would count those too on
    Redis 6 (not on 7), so the figure would depend on the server's version.
    """
    owners = {p: node.node_id for node in nodes for p in local_ports_to(node.pid, port)}
    log = CommandLog(port).start()
    time.sleep(seconds)
    counts = by_owner(log.stop(), owners)
    sent = sum(sum(c.values()) for owner, c in counts.items() if owner not in ("lua", "other"))
    return round(sent / seconds / len(nodes), 2)


__all__ = ["main", "render", "run"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2000, help="callers per herd")
    parser.add_argument("--delay", type=float, default=1.0, help="backend delay, seconds")
    parser.add_argument("--herds", type=int, default=3, help="herds, one message each")
    parser.add_argument("--waiters", type=int, default=2000, help="callers for the RSS figure")
    parser.add_argument("--waiter-delay", type=float, default=4.0, help="its backend delay")
    args = parser.parse_args(argv)
    stop_children_on_sigterm()
    if min(args.nodes, args.clients, args.herds, args.waiters) < 1 or args.delay <= 0:
        parser.error("need --nodes, --clients, --herds, --waiters >= 1 and --delay > 0")
    if args.waiter_delay < 2:
        parser.error("--waiter-delay must be >= 2 s (the callers must still wait when sampled)")
    command = (
        f"python -m benchmarks.cluster --nodes {args.nodes} --clients {args.clients}"
        f" --delay {args.delay:g} --herds {args.herds} --waiters {args.waiters}"
        f" --waiter-delay {args.waiter_delay:g}"
    )
    result = run(args, command)
    print(json.dumps(result, sort_keys=True) if args.json else render(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
