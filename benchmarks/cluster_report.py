"""Turning the cluster benchmark's measurements into its JSON summary and markdown tables."""

from __future__ import annotations

from typing import Any

from benchmarks.common import CLIENT_NOTE, machine_info, markdown_table, ratio
from clients.herd import latency_summary


def summarise(
    args: Any, command: str, outcome: dict[str, Any], background_per_node_s: float
) -> dict[str, Any]:
    """The ``--json`` object, from what :func:`benchmarks.cluster.run` measured."""
    herd = outcome["herd"]
    rounds = herd["rounds"]
    pooled = herd["pooled"]
    client_calls = sum(r["client_calls"] for r in rounds)
    backend_calls = sum(r["backend_calls"] for r in rounds)
    redis_commands = sum(r["redis_call_path_commands"] for r in rounds)
    windows = args.nodes * len(rounds)  # one in-flight window per node per herd

    def per_window(role: str) -> float | None:
        mine = [n for r in rounds for n in r["nodes"] if n["role"] == role]
        return ratio(sum(n["redis_call_path_commands"] for n in mine), len(mine))

    leader, follower = latency_summary(pooled["leader"]), latency_summary(pooled["follower"])
    return {
        "benchmark": "cluster",
        "command": command,
        "setup": [  # (what, command) pairs, in start order
            ["redis", "redis-server --port <redis> --save '' --appendonly no (gateway.localredis)"],
            [
                "backend",
                "gateway example-backend --listen 127.0.0.1:0 --service supervisor"
                f" --delay {args.delay:g}",
            ],
            [
                "nodes",
                f"{args.nodes} x gateway serve --listen 127.0.0.1:0 --backend <backend>"
                " --redis redis://127.0.0.1:<redis>/0 --node-id bench-nI --admin 127.0.0.1:0",
            ],
            [
                "load",
                f"benchmarks.loadgen: {args.clients} framed connections round-robin over the"
                " nodes; each herd sends alertSupervisor(same message) on all of them at once",
            ],
            [
                "memory",
                "gateway serve ... --node-id bench-mem (same Redis) against a --delay"
                f" {args.waiter_delay:g} backend; {args.waiters} connections, one call each",
            ],
        ],
        "nodes": args.nodes,
        "clients": args.clients,
        "backend_delay_s": args.delay,
        "herds": len(rounds),
        "note": CLIENT_NOTE,
        "machine": machine_info(),
        "connect_s": herd["connect_s"],
        "connect_errors": herd["connect_errors"],
        "client_calls": client_calls,
        "ok": sum(r["ok"] for r in rounds),
        "backend_calls": backend_calls,
        "backend_calls_per_herd": [r["backend_calls"] for r in rounds],
        "latency_ms": {
            "leader_node_callers": leader,
            "follower_node_callers": follower,
            "follower_minus_backend_delay": latency_summary(pooled["follower_minus_delay"]),
            "follower_minus_leader_node_p50": round(follower["p50"] - leader["p50"], 3),
            "leader_node_after_first_reply": latency_summary(pooled["leader_lag"]),
            "follower_node_after_first_reply": latency_summary(pooled["follower_lag"]),
        },
        "redis": {
            "call_path_round_trips": redis_commands,
            "per_client_call": ratio(redis_commands, client_calls),
            "per_backend_call": ratio(redis_commands, backend_calls),
            "per_node_window": ratio(redis_commands, windows),
            "leader_node_per_window": per_window("leader"),
            "follower_node_per_window": per_window("follower"),
            "background_commands_per_node_s": background_per_node_s,
        },
        "rounds": rounds,
        "direct": outcome["direct"],
        "memory": outcome["memory"],
    }


def _pp(summary: dict[str, float]) -> str:
    return f"{summary['p50']:.1f} / {summary['p99']:.1f}"


def render(result: dict[str, Any]) -> str:
    """The markdown tables (also what ``benchmarks.run`` copies into results.md)."""
    lat, red, mem = result["latency_ms"], result["redis"], result["memory"]
    direct = result["direct"]
    herd = markdown_table(
        ["figure", "value"],
        [
            ["client calls (herds x clients)", result["client_calls"]],
            ["correct replies", result["ok"]],
            ["backend calls, all herds", result["backend_calls"]],
            ["backend calls per herd", ", ".join(map(str, result["backend_calls_per_herd"]))],
            ["leader-node callers: latency p50 / p99 ms", _pp(lat["leader_node_callers"])],
            ["remote followers: latency p50 / p99 ms", _pp(lat["follower_node_callers"])],
            [
                "remote followers: latency - backend delay, p50 / p99 ms",
                _pp(lat["follower_minus_backend_delay"]),
            ],
            [
                "same herd direct to the backend: latency - backend delay, p50 / p99 ms",
                f"{_pp(direct['minus_backend_delay_ms'])}"
                f" ({direct['backend_calls']:,} backend calls)",
            ],
            ["remote-follower p50 - leader-node p50, ms", lat["follower_minus_leader_node_p50"]],
            [
                "leader-node callers, after the herd's first reply: p50 / p99 ms",
                _pp(lat["leader_node_after_first_reply"]),
            ],
            [
                "remote followers, after the herd's first reply: p50 / p99 ms",
                _pp(lat["follower_node_after_first_reply"]),
            ],
            ["Redis round trips on the call path, all nodes", red["call_path_round_trips"]],
            ["  per client call", red["per_client_call"]],
            ["  per backend call", red["per_backend_call"]],
            ["  per in-flight window per node", red["per_node_window"]],
            ["  leader node, per window", red["leader_node_per_window"]],
            ["  follower node, per window", red["follower_node_per_window"]],
            [
                "background commands per node per s (heartbeat, keepalive; idle)",
                red["background_commands_per_node_s"],
            ],
        ],
    )
    nodes = markdown_table(
        ["herd", "node", "role", "calls", "p50 ms", "p99 ms", "after first reply p50 / p99 ms",
         "call-path round trips", "all commands seen (incl. heartbeat)"],
        [
            [i, n["node"], n["role"], n["calls"], n["latency_ms"]["p50"], n["latency_ms"]["p99"],
             _pp(n["after_first_reply_ms"]), n["redis_call_path_commands"],
             " ".join(f"{k}:{v}" for k, v in sorted(n["redis_commands"].items()))]
            for i, r in enumerate(result["rounds"])
            for n in r["nodes"]
        ],
    )  # fmt: skip
    rss = mem["rss_kib"]
    memory = markdown_table(
        ["figure", "value"],
        [
            ["waiting callers (one key, one connection each)", mem["waiters"]],
            [
                "all waiting when sampled (node's in_flight)",
                f"{mem['all_waiting_when_sampled']} ({mem['in_flight_when_sampled']})",
            ],
            [
                "VmRSS idle / connected / waiting / after drain, KiB",
                " / ".join(f"{rss[k]:,}" for k in ("idle", "connected", "waiting", "after_drain")),
            ],
            ["bytes per waiting caller (incl. its connection)", mem["bytes_per_waiter"]],
            ["  of which the idle connection", mem["bytes_per_connection"]],
            ["  of which the waiting call", mem["bytes_per_waiting_call"]],
            ["RSS after drain above idle, KiB", mem["after_drain_above_idle_kib"]],
        ],
    )
    intro = (
        f"Produced by `{result['command']}`: {result['nodes']} nodes, {result['herds']} herds"
        f" of {result['clients']:,} identical concurrent calls each (backend delay"
        f" {result['backend_delay_s']:g} s; connecting took {result['connect_s']} s,"
        f" {result['connect_errors']} connect errors). The leader's node is the one whose"
        " backend_calls counter rose. \"After the herd's first reply\" is a caller's finish"
        " time minus the first finish of any caller in that herd, on the client's clock. Round"
        " trips are the commands the nodes sent, seen through Redis MONITOR (commands a Lua"
        " script runs inside Redis are not round trips and are left out)."
    )
    setup = [f"* {name}: `{text}`" for name, text in result["setup"]]
    return "\n".join(
        [intro, "", herd, "", "Per node and herd:", "", nodes, "",
         "Memory per waiting caller (VmRSS from /proc/<pid>/status):", "", memory, "",
         result["note"] + " Python's allocator keeps freed memory for reuse, so RSS after the"
         " drain stays near the peak.", "",
         "Setup (`<redis>`, `<backend>`: the ports each process picked):", "", *setup]
    )  # fmt: skip
