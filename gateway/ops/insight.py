"""Readers of what ops look at besides the counters: in-flight calls, hot keys, history.

Synchronous (redis-py), like ``gateway status`` which uses them (and the dashboard, through
it). Each reader *queues* its commands on a pipeline and returns a function that turns the
replies into report data, so ``status.collect`` sends everything in a few round trips.
Every reader tolerates absent keys (a cluster whose nodes do not write them yet) and keys of
an unexpected type (it shows nothing for them rather than failing the report).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis

from gateway.observe import split_call_key
from gateway.ops.opskeys import (
    BUCKETS,
    HOT_BUCKET_SECONDS,
    OpsKeys,
    minute_of,
    parse_hot_member,
)
from gateway.redis.redispy import SyncRedis
from gateway.stats import TRAFFIC_COUNTERS

HISTORY_NUMBERS = (*TRAFFIC_COUNTERS, "in_flight")


def _ok(reply: Any) -> bool:
    return not isinstance(reply, redis.ResponseError)


def split_method(method: str) -> tuple[str, str]:
    """``("<backend>", "<upstream name>")`` of ``"<backend>.<upstream name>"``."""
    backend, dot, name = method.partition(".")
    return (backend, name) if dot else ("", method)


# -- history ---------------------------------------------------------------------------------


def queue_history(
    pipe: Any, keys: OpsKeys, node_ids: Sequence[str], count: int
) -> Callable[[list[Any]], dict[str, list[dict[str, Any]]]]:
    """The last ``count`` history entries of each node, oldest first."""
    for node_id in node_ids:
        pipe.xrevrange(keys.history(node_id), count=count)

    def parse(replies: list[Any]) -> dict[str, list[dict[str, Any]]]:
        history: dict[str, list[dict[str, Any]]] = {}
        for node_id, entries in zip(node_ids, replies, strict=True):
            history[node_id] = [_entry(f) for _, f in reversed(entries)] if _ok(entries) else []
        return history

    return parse


def _entry(fields: dict[str, str]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "t": _number(fields.get("t")),
        "dt": _number(fields.get("dt")),
    }
    for name in HISTORY_NUMBERS:
        entry[name] = int(_number(fields.get(name)))
    if "redis_mode" in fields:
        entry["redis_mode"] = fields["redis_mode"]
    return entry


def _number(text: str | None) -> float:
    try:
        return float(text) if text is not None else 0.0
    except ValueError:
        return 0.0


# -- hot keys --------------------------------------------------------------------------------


def queue_hot_keys(
    pipe: Any, keys: OpsKeys, now: float, minutes: int, top: int
) -> Callable[[list[Any]], list[dict[str, Any]]]:
    """The ``top`` keys by callers summed over the last ``minutes`` minute buckets (the
    current one included), with the newest preview of each, if any."""
    starts = [minute_of(now) - i * HOT_BUCKET_SECONDS for i in range(max(1, minutes))]
    for minute in starts:
        pipe.zrevrange(keys.hot(minute), 0, top * 2 - 1, withscores=True)
        pipe.hgetall(keys.hot_previews(minute))

    def parse(replies: list[Any]) -> list[dict[str, Any]]:
        callers: dict[str, float] = {}
        previews: dict[str, str] = {}
        for i in range(len(starts)):
            ranked, shown = replies[2 * i], replies[2 * i + 1]
            for member, score in ranked if _ok(ranked) else []:
                callers[member] = callers.get(member, 0.0) + float(score)
            for member, text in (shown if _ok(shown) else {}).items():
                previews.setdefault(member, text)  # newest minute first: keep its preview
        hottest = sorted(callers.items(), key=lambda item: (-item[1], item[0]))[:top]
        report = []
        for member, score in hottest:
            method, key_id = parse_hot_member(member)
            backend, name = split_method(method)
            row: dict[str, Any] = {
                "method": name,
                "backend": backend,
                "key_id": key_id,
                "callers": int(score),
            }
            if member in previews:
                row["preview"] = previews[member]
            report.append(row)
        return report

    return parse


# -- in flight -------------------------------------------------------------------------------


def queue_in_flight_index(
    pipe: Any, keys: OpsKeys, per_bucket: int
) -> Callable[[list[Any]], list[tuple[str, str, float]]]:
    """The oldest ``per_bucket`` entries of each bucket's index: (bucket, call key, start)."""
    for bucket in BUCKETS:
        pipe.zrange(keys.inflight(bucket), 0, per_bucket - 1, withscores=True)

    def parse(replies: list[Any]) -> list[tuple[str, str, float]]:
        found = []
        for bucket, members in zip(BUCKETS, replies, strict=True):
            for key, score in members if _ok(members) else []:
                found.append((bucket, key, _seconds(float(score))))
        found.sort(key=lambda entry: entry[2])
        return found

    return parse


def _seconds(score: float) -> float:
    """Start times are unix seconds; milliseconds (an index written in ms) are accepted too."""
    return score / 1000.0 if score > 1e11 else score


def read_in_flight(
    client: SyncRedis,
    keys: OpsKeys,
    candidates: list[tuple[str, str, float]],
    now: float,
    limit: int,
) -> list[dict[str, Any]]:
    """Details of the oldest ``limit`` live entries among ``candidates`` (oldest first).

    An entry is live while its flight hash or its lease exists: a dead leader's entry
    disappears from the report with its lease, whether or not the index was cleaned yet.
    """
    # Dead entries are skipped, so look at more than ``limit`` to still show ``limit``.
    candidates = candidates[: limit * 2]
    if not candidates:
        return []
    pipe = client.pipeline(transaction=False)
    for bucket, key, _ in candidates:
        pipe.hgetall(keys.flight(bucket, key))
        pipe.get(keys.lease(bucket, key))
    replies = pipe.execute(raise_on_error=False)
    calls: list[dict[str, Any]] = []
    for i, (_bucket, key, started) in enumerate(candidates):
        flight = replies[2 * i] if _ok(replies[2 * i]) else {}
        token = replies[2 * i + 1] if _ok(replies[2 * i + 1]) else None
        token = token or flight.get("token")
        if not flight and not token:
            continue
        method, key_id = split_call_key(key)
        backend, name = split_method(method)
        calls.append(
            {
                "method": name,
                "backend": backend,
                "leader": flight.get("node") or (token or "").partition("/")[0] or None,
                "age_s": round(max(0.0, now - started), 3),
                "started_at": started,
                "followers": int(_number(flight.get("followers"))),
                "key": key,
                "key_id": key_id,
            }
        )
        if len(calls) >= limit:
            break
    return calls
