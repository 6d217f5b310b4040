"""``gateway status``: the cluster's nodes and counters, read from the heartbeat keys.

Synchronous (redis-py): it is a one-shot command-line tool, not part of a running node.
A node is ``alive`` when its last heartbeat is at most :data:`ALIVE_WITHIN` seconds old,
else ``stale``; a stale node whose hash already expired is listed with no counters.
Totals sum every node that still has counters, and ``coalescing_ratio`` is
``calls / backend_calls`` (how many client calls one backend call answered; None before
the first backend call).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, cast

import redis

from gateway.cluster.keys import KeySchema
from gateway.cluster.redispy import SyncRedis, sync_client
from gateway.cluster.url import InvalidRedisURL, parse_redis_target

ALIVE_WITHIN = 3.0
COUNTERS = (
    "calls",
    "backend_calls",
    "coalesced_local",
    "coalesced_remote",
    "cache_hits",
    "errors",
    "in_flight",
    "hmac_rejects",
)
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


def collect(client: SyncRedis, prefix: str, now: float | None = None) -> dict[str, Any]:
    """The status report: ``{"nodes": [...], "totals": {...}}`` (the ``--json`` output)."""
    now = time.time() if now is None else now
    keys = KeySchema(prefix)
    members = cast(list[tuple[str, float]], client.zrange(keys.nodes(), 0, -1, withscores=True))
    pipe = client.pipeline(transaction=False)
    for node_id, _ in members:
        pipe.hgetall(keys.node(node_id))
    hashes: list[dict[str, str]] = pipe.execute() if members else []
    nodes = [
        _node(node_id, score, fields, now)
        for (node_id, score), fields in zip(members, hashes, strict=True)
    ]
    nodes.sort(key=lambda n: n["node_id"])
    return {"nodes": nodes, "totals": _totals(nodes), "time": now}


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
    return node


def _totals(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    counted = [n for n in nodes if n["has_counters"]]
    totals: dict[str, Any] = {name: sum(n[name] for n in counted) for name in COUNTERS}
    totals["nodes"] = len(nodes)
    totals["alive"] = sum(1 for n in nodes if n["state"] == "alive")
    totals["coalescing_ratio"] = _ratio(totals["calls"], totals["backend_calls"])
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


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key == "age":
        return f"{value:.1f}s ago"
    if key == "coalescing_ratio":
        return f"{value:.2f}"
    return str(value)


def run_status(args: argparse.Namespace) -> int:
    """Entry point of ``gateway status`` (args: redis, prefix, json, watch)."""
    try:
        shown = str(parse_redis_target(args.redis))  # for messages: never shows the password
        KeySchema(args.prefix)
    except (InvalidRedisURL, ValueError) as exc:
        print(f"gateway status: {exc}", file=sys.stderr)
        return 1
    # Any URL form: with redis+cluster:// the node keys are read from whichever shard has them.
    client = sync_client(args.redis, decode_responses=True)
    try:
        while True:
            report = collect(client, args.prefix)
            if args.json:
                print(json.dumps(report, sort_keys=True), flush=True)
            else:
                if args.watch:
                    print("\x1b[2J\x1b[H", end="")  # clear the screen, cursor home
                print(render_table(report), flush=True)
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
