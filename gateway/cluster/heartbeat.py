"""Publishes this node's counters to Redis every second, for ``gateway status`` and dashboards.

Each beat writes ``<prefix>node:<node_id>`` (a hash: the NodeStats snapshot plus
``last_seen``, ``node_id``, ``address`` and the coordinator's extra fields such as
``hmac_rejects`` and ``redis_mode``), gives it a ``expire`` second PEXPIRE so a dead node's
hash disappears by itself, and scores the node in the ``<prefix>nodes`` sorted set with
``last_seen`` (entries older than ``history`` are trimmed there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway.cluster.connection import Arg, RedisCommands
from gateway.cluster.keys import KeySchema
from gateway.reactors import as_clock
from gateway.stats import NodeStats

log = Logger(namespace="gateway.cluster")

Extra = Callable[[], Mapping[str, float | str]]


class Heartbeat:
    """``start()`` beats now and every ``interval`` seconds; ``stop()`` ends it.

    Beats are skipped while Redis is down (the key expiring is what tells the cluster this
    node is not reachable); a failed beat is dropped and the next one tries again.
    """

    def __init__(
        self,
        redis: RedisCommands,
        stats: NodeStats,
        *,
        node_id: str,
        clock: IReactorTime,
        keys: KeySchema | None = None,
        address: str | None = None,
        extra: Extra | None = None,
        interval: float = 1.0,
        expire: float = 10.0,
        history: float = 3600.0,
    ) -> None:
        self._redis = redis
        self._stats = stats
        self._node_id = node_id
        self._clock = as_clock(clock)
        self._keys = keys or KeySchema()
        self.address = address  # settable: serve learns its port after listening
        self._extra = extra
        self._interval = interval
        self._expire_ms = max(1, int(expire * 1000))
        self._history = history
        self._loop = LoopingCall(self.beat)
        self._loop.clock = clock

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def fields(self) -> dict[str, str]:
        """The hash fields of one beat (all values as Redis stores them: strings)."""
        now = self._clock.seconds()
        values: dict[str, float | str] = dict(self._stats.snapshot())
        if self._extra is not None:
            values.update(self._extra())
        values.update(last_seen=now, node_id=self._node_id, address=self.address or "")
        return {name: _text(value) for name, value in values.items()}

    def beat(self) -> Deferred[None]:
        """Write one beat; never fails (so the loop keeps going)."""
        if not self._redis.is_up:
            return succeed(None)
        fields = self.fields()
        now = float(fields["last_seen"])
        node_key, nodes_key = self._keys.node(self._node_id), self._keys.nodes()
        hset: list[Arg] = ["HSET", node_key]
        for name, value in fields.items():
            hset += [name, value]
        # Sent back to back without waiting: one network round trip for the four commands.
        sent: list[Deferred[Any]] = [
            self._redis.execute(*hset),
            self._redis.execute("PEXPIRE", node_key, self._expire_ms),
            self._redis.execute("ZADD", nodes_key, _text(now), self._node_id),
            self._redis.execute("ZREMRANGEBYSCORE", nodes_key, "-inf", _text(now - self._history)),
        ]
        d = gatherResults(sent, consumeErrors=True)
        return d.addCallbacks(lambda _: None, self._failed)

    def _failed(self, reason: object) -> None:
        log.debug("heartbeat not written: {reason}", reason=reason)


def _text(value: float | str) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return str(value)
