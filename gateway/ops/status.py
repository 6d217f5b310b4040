"""``gateway status``: the cluster's nodes and counters, read from the heartbeat keys.

Synchronous (redis-py): it is a one-shot command-line tool, not part of a running node.
A node is ``alive`` when its last heartbeat is at most :data:`ALIVE_WITHIN` seconds old,
else ``stale``; a stale node whose hash already expired is listed with no counters.
Totals sum every node that still has counters, and ``coalescing_ratio`` is
``calls / backend_calls`` (how many client calls one backend call answered; None before
the first backend call).

The report also holds the calls in flight (the per-bucket index the call scripts keep,
oldest first), the hot keys of the last minutes and each node's recent history
(:mod:`gateway.ops.insight`), in three pipelined round trips. ``gateway dashboard``
serves this same report as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, cast

import redis

from gateway.cluster.keys import KeySchema
from gateway.ops.insight import (
    queue_history,
    queue_hot_keys,
    queue_in_flight_index,
    read_in_flight,
)
from gateway.ops.opskeys import OpsKeys
from gateway.ops.sections import render_history, render_hot_keys, render_in_flight
from gateway.redis.redispy import SyncRedis, sync_client
from gateway.redis.url import InvalidRedisURL, parse_redis_target
from gateway.stats import TRAFFIC_COUNTERS

ALIVE_WITHIN = 3.0
COUNTERS = (*TRAFFIC_COUNTERS, "in_flight", "hmac_rejects")
_COLUMNS = (  # (header, row key) of the table
    ("NODE", "node_id"),
    ("STATE", "state"),
    ("SEEN", "age"),
    ("CALLS", "calls"),
    ("BACKEND", "backend_calls"),
    ("LOCAL", "coalesced_local"),
    ("REMOTE", "coalesced_remote"),
    ("CACHE", "cache_hits"),
    ("ERRORS", "errors"),
    ("IN_FLIGHT", "in_flight"),
    ("RATIO", "coalescing_ratio"),
    ("REDIS", "redis_mode"),
    ("ADDRESS", "address"),
)


def collect(
    client: SyncRedis,
    prefix: str,
    now: float | None = None,
    *,
    hot_minutes: int = 5,
    history: int = 60,
    hot_top: int = 20,
    in_flight_limit: int = 50,
) -> dict[str, Any]:
    """The status report (the ``--json`` output): ``nodes``, ``totals``, ``time``,
    ``in_flight`` (oldest first), ``hot_keys`` (of the last ``hot_minutes`` minutes),
    ``history`` (the last ``history`` entries per node), ``redis_mode`` and ``redis``."""
    now = time.time() if now is None else now
    keys, ops = KeySchema(prefix), OpsKeys(prefix)
    # Not one pipeline: a Redis Cluster pipeline refuses keyless commands (TIME, INFO).
    members = cast(list[tuple[str, float]], client.zrange(keys.nodes(), 0, -1, withscores=True))
    redis_time: Any
    info: Any
    try:
        redis_time = client.time()
        info = client.info("server")
    except redis.RedisError as exc:
        redis_time = info = exc
    node_ids = [node_id for node_id, _ in members]
    # In-flight start times come from Redis's clock (the scripts' TIME), so ages do too.
    redis_now = now if isinstance(redis_time, Exception) else redis_time[0] + redis_time[1] / 1e6
    server = {} if isinstance(info, Exception) else info

    pipe = client.pipeline(transaction=False)
    for node_id in node_ids:
        pipe.hgetall(keys.node(node_id))
    parse_history = queue_history(pipe, ops, node_ids, history)
    parse_hot = queue_hot_keys(pipe, ops, now, hot_minutes, hot_top)
    parse_index = queue_in_flight_index(pipe, ops, in_flight_limit)
    replies = pipe.execute(raise_on_error=False)
    hashes = [r if isinstance(r, dict) else {} for r in replies[: len(node_ids)]]
    rest = replies[len(node_ids) :]
    history_replies, rest = rest[: len(node_ids)], rest[len(node_ids) :]
    hot_replies, index_replies = rest[: 2 * max(1, hot_minutes)], rest[2 * max(1, hot_minutes) :]

    nodes = [
        _node(node_id, score, fields, now)
        for (node_id, score), fields in zip(members, hashes, strict=True)
    ]
    nodes.sort(key=lambda n: n["node_id"])
    in_flight = read_in_flight(client, ops, parse_index(index_replies), redis_now, in_flight_limit)
    mode = server.get("redis_mode")
    return {
        "nodes": nodes,
        "totals": _totals(nodes),
        "time": now,
        "in_flight": in_flight,
        "hot_keys": parse_hot(hot_replies),
        "hot_keys_minutes": max(1, hot_minutes),
        "history": parse_history(history_replies),
        "redis_mode": mode,
        "redis": {"mode": mode, "version": server.get("redis_version"), "time": redis_now},
    }


def _node(node_id: str, score: float, fields: dict[str, str], now: float) -> dict[str, Any]:
    last_seen = float(fields.get("last_seen", score))
    age = max(0.0, now - last_seen)
    node: dict[str, Any] = {
        "node_id": node_id,
        "state": "alive" if age <= ALIVE_WITHIN else "stale",
        "last_seen": last_seen,
        "age": round(age, 3),
        "address": fields.get("address") or None,
        "redis_mode": fields.get("redis_mode") or None,
        "started_at": float(fields["started_at"]) if "started_at" in fields else None,
        "has_counters": bool(fields),
    }
    for name in COUNTERS:
        node[name] = int(float(fields.get(name, 0)))
    node["coalescing_ratio"] = _ratio(node["calls"], node["backend_calls"])
    node["errors_by_kind"] = {
        name.removeprefix("error."): int(float(value))
        for name, value in sorted(fields.items())
        if name.startswith("error.")
    }
    return node


def _totals(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    counted = [n for n in nodes if n["has_counters"]]
    totals: dict[str, Any] = {name: sum(n[name] for n in counted) for name in COUNTERS}
    totals["nodes"] = len(nodes)
    totals["alive"] = sum(1 for n in nodes if n["state"] == "alive")
    totals["coalescing_ratio"] = _ratio(totals["calls"], totals["backend_calls"])
    kinds: dict[str, int] = {}
    for node in counted:
        for kind, count in node["errors_by_kind"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    totals["errors_by_kind"] = dict(sorted(kinds.items()))
    return totals


def _ratio(calls: int, backend_calls: int) -> float | None:
    return round(calls / backend_calls, 2) if backend_calls else None


def render_table(report: dict[str, Any]) -> str:
    """The human-readable form: one row per node, then the cluster totals."""
    rows = [[_cell(node, key) for _, key in _COLUMNS] for node in report["nodes"]]
    totals = report["totals"]
    summary = dict(totals, node_id="TOTAL", state=f"{totals['alive']}/{totals['nodes']} up")
    rows.append([_cell(summary, key) for _, key in _COLUMNS])
    table = [[header for header, _ in _COLUMNS], *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    if not report["nodes"]:
        lines.insert(1, "(no gateway node has sent a heartbeat yet)")
    return "\n".join(lines)


def render_report(report: dict[str, Any]) -> str:
    """The whole ``gateway status`` text: the node table, then in-flight calls, hot keys and a
    short history per node."""
    return "\n\n".join(
        [
            render_table(report),
            render_in_flight(report.get("in_flight", [])),
            render_hot_keys(report.get("hot_keys", []), report.get("hot_keys_minutes", 5)),
            render_history(report.get("history", {})),
        ]
    )


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key == "age":
        return f"{value:.1f}s ago"
    if key == "coalescing_ratio":
        return f"{value:.2f}"
    return str(value)


def open_client(args: argparse.Namespace) -> tuple[str, SyncRedis]:
    """``(URL as shown in messages, client)`` for ``args.redis`` / ``args.prefix``;
    ``InvalidRedisURL`` / ``ValueError`` for a bad URL, prefix or window."""
    shown = str(parse_redis_target(args.redis))  # for messages: never shows the password
    KeySchema(args.prefix)
    if args.hot_minutes < 1 or args.history < 1:
        raise ValueError("--hot-minutes and --history must be >= 1")
    # Any URL form: with redis+cluster:// the node keys are read from whichever shard has them.
    return shown, sync_client(args.redis, decode_responses=True)


def run_status(args: argparse.Namespace) -> int:
    """Entry point of ``gateway status`` (args: redis, prefix, json, watch)."""
    try:
        shown, client = open_client(args)
    except (InvalidRedisURL, ValueError) as exc:
        print(f"gateway status: {exc}", file=sys.stderr)
        return 1
    try:
        while True:
            report = collect(
                client, args.prefix, hot_minutes=args.hot_minutes, history=args.history
            )
            if args.json:
                print(json.dumps(report, sort_keys=True), flush=True)
            else:
                if args.watch:
                    print("\x1b[2J\x1b[H", end="")  # clear the screen, cursor home
                print(render_report(report), flush=True)
            if not args.watch:
                return 0
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 0
    except redis.RedisError as exc:
        print(f"gateway status: cannot read cluster state from {shown}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
