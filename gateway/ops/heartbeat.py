"""Publishes this node's counters to Redis every second, for ``gateway status`` and dashboards.

Each beat writes ``<prefix>node:<node_id>`` (a hash: the NodeStats snapshot plus
``last_seen``, ``node_id``, ``address``, the coordinator's extra fields such as
``hmac_rejects`` and ``redis_mode``, and ``error.<kind>`` counts), gives it a ``expire``
second PEXPIRE so a dead node's hash disappears by itself, and scores the node in the
``<prefix>nodes`` sorted set with ``last_seen`` (entries older than ``history`` are trimmed
there).

With :class:`~gateway.observe.Observations` it also appends the counter deltas since the
previous beat to the node's history stream (XADD MAXLEN ~ ``history_entries``) and adds the
hot keys recorded since then to the current minute's sorted set (one ZINCRBY per key per
beat, however many calls; the set is trimmed to its ``hot_members`` hottest). Every command
names one key (Redis Cluster ready), and all are sent back to back: one round trip a beat.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway.cluster.keys import KeySchema
from gateway.cluster.scripts import Script, ScriptRunner
from gateway.observe import Observations
from gateway.ops.opskeys import OpsKeys, hot_member, minute_of
from gateway.reactors import as_clock
from gateway.redis.connection import Arg, RedisCommands
from gateway.stats import TRAFFIC_COUNTERS, NodeStats

log = Logger(namespace="gateway.cluster")

Extra = Callable[[], Mapping[str, float | str]]

# NodeStats counters whose per-beat deltas go to the history stream (in_flight is a gauge:
# its current value is written as is).
HISTORY_COUNTERS = TRAFFIC_COUNTERS


INDEX_EVERY = 10  # beats between refreshes of the node's score in the node index
TRIM_EVERY = 600  # beats between trims of the node index (a multiple of INDEX_EVERY)

# KEYS: the node's counters hash, its history stream (same hash tag: the node id). ARGV:
# first beat ('1': replace the hash), hash expiry ms, history MAXLEN, history expiry ms,
# the number n of hash fields, n field/value pairs, then the history entry's field/value
# pairs (none: no entry). XADD's "*" id makes this non-deterministic, which Redis >= 5
# replicates by effects.
BEAT = Script(
    "beat",
    """
if ARGV[1] == '1' then redis.call('DEL', KEYS[1]) end
local n = tonumber(ARGV[5])
local hset = {'HSET', KEYS[1]}
for i = 6, 5 + 2 * n do hset[#hset + 1] = ARGV[i] end
redis.call(unpack(hset))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local first = 6 + 2 * n
if #ARGV >= first then
  local xadd = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*'}
  for i = first, #ARGV do xadd[#xadd + 1] = ARGV[i] end
  redis.call(unpack(xadd))
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return 1
""",
)


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
        observations: Observations | None = None,
        history_entries: int = 3600,
        hot_window: float = 3600.0,
        hot_per_beat: int = 100,
        hot_members: int = 200,
        publish_node: bool = True,
    ) -> None:
        """``publish_node=False``: write only hot keys (a worker of a multi-worker node,
        whose supervisor publishes the node's hash and history for all its workers)."""
        self._redis = redis
        self._publish_node = publish_node
        self._stats = stats
        self._node_id = node_id
        self._clock = as_clock(clock)
        self._keys = keys or KeySchema()
        self.address = address  # settable: serve learns its port after listening
        self._extra = extra
        self._interval = interval
        self._expire_ms = max(1, int(expire * 1000))
        self._history = history
        self._ops = OpsKeys(self._keys.prefix)
        self._observations = observations
        self._history_entries = history_entries
        self._hot_window_ms = max(1, int(hot_window * 1000))
        self._hot_per_beat = hot_per_beat
        self._hot_members = hot_members
        self._sent: dict[str, float] | None = None  # counters as of the last history entry
        self._sent_at: float | None = None
        self._first_beat = True
        self._beats = 0
        self._scripts = ScriptRunner(redis)
        self._loop = LoopingCall(self.beat)
        self._loop.clock = clock

    def start(self) -> None:
        if not self._publish_node and self._observations is None:
            return  # nothing to write
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
        if self._observations is not None:
            for kind, count in self._observations.errors.snapshot().items():
                values[f"error.{kind}"] = float(count)
        values.update(last_seen=now, node_id=self._node_id, address=self.address or "")
        return {name: _text(value) for name, value in values.items()}

    def history_entry(self, fields: Mapping[str, str]) -> dict[str, str]:
        """The stream entry for a beat with hash ``fields``: ``t`` (beat time), ``dt``
        (seconds it covers) and per counter its increase since the previous entry.

        The baseline moves when the entry is *sent*: a beat Redis loses loses its deltas
        (the counters hash stays right), and never counts them twice.
        """
        now = float(fields["last_seen"])
        counters = {name: float(fields.get(name, 0)) for name in HISTORY_COUNTERS}
        since = self._sent_at if self._sent_at is not None else self._stats.started_at
        previous = self._sent or dict.fromkeys(HISTORY_COUNTERS, 0.0)
        entry = {"t": _text(round(now, 3)), "dt": _text(round(max(0.0, now - since), 3))}
        for name in HISTORY_COUNTERS:
            entry[name] = _text(max(0.0, counters[name] - previous[name]))
        entry["in_flight"] = fields.get("in_flight", "0")
        if "redis_mode" in fields:
            entry["redis_mode"] = fields["redis_mode"]
        self._sent, self._sent_at = counters, now
        return entry

    def beat(self) -> Deferred[None]:
        """Write one beat; never fails (so the loop keeps going).

        An idle node's beat is ONE command: the BEAT script writes the counters hash and the
        history entry (both carry the node id as hash tag, so one slot of a Redis Cluster).
        The node index gets its score refreshed every ``INDEX_EVERY`` beats only - ``gateway
        status`` reads liveness from the hash's ``last_seen`` - and is trimmed hourly; hot
        keys add commands only in beats that have some.
        """
        if not self._redis.is_up:
            return succeed(None)
        fields = self.fields()
        if not self._publish_node:
            commands = self._ops_commands(fields) if self._observations is not None else []
            hot = gatherResults([self._redis.execute(*c) for c in commands], consumeErrors=True)
            return hot.addCallbacks(lambda _: None, self._failed)
        now = float(fields["last_seen"])
        node_key = self._keys.node(self._node_id)
        history_key = self._ops.history(self._node_id)
        args: list[Arg] = [
            "1" if self._first_beat else "0",
            self._expire_ms,
            self._history_entries,
            max(1, int(self._history * 1000)),
            len(fields),
        ]
        for name, value in fields.items():
            args += [name, value]
        if self._observations is not None:
            for name, value in self.history_entry(fields).items():
                args += [name, value]
        # A node restarted under the same id must not inherit fields its new counters never
        # overwrite (error kinds it has not seen since): the first beat replaces the hash.
        sent: list[Deferred[Any]] = [self._scripts.run(BEAT, [node_key, history_key], args)]
        if self._beats % INDEX_EVERY == 0:
            nodes_key = self._keys.nodes()
            sent.append(self._redis.execute("ZADD", nodes_key, _text(now), self._node_id))
            if self._beats % TRIM_EVERY == 0:
                cutoff = _text(now - self._history)
                sent.append(self._redis.execute("ZREMRANGEBYSCORE", nodes_key, "-inf", cutoff))
        self._first_beat = False
        self._beats += 1
        if self._observations is not None:
            sent += [self._redis.execute(*command) for command in self._ops_commands(fields)]
        d = gatherResults(sent, consumeErrors=True)
        return d.addCallbacks(lambda _: None, self._failed)

    def _ops_commands(self, fields: Mapping[str, str]) -> list[list[Arg]]:
        assert self._observations is not None
        now = float(fields["last_seen"])
        commands: list[list[Arg]] = []
        hot = self._observations.hot_keys.drain(top=self._hot_per_beat)
        if hot:
            minute = minute_of(now)
            zset, previews = self._ops.hot(minute), self._ops.hot_previews(minute)
            with_preview: list[Arg] = ["HSET", previews]
            for key in hot:
                member = hot_member(key.method, key.key_id)
                commands.append(["ZINCRBY", zset, key.callers, member])
                if key.preview is not None:
                    with_preview += [member, key.preview]
            # Keep the hottest members only: a minute of many cold keys stays bounded.
            commands.append(["ZREMRANGEBYRANK", zset, 0, -(self._hot_members + 1)])
            commands.append(["PEXPIRE", zset, self._hot_window_ms])
            if len(with_preview) > 2:
                commands += [with_preview, ["PEXPIRE", previews, self._hot_window_ms]]
        return commands

    def _failed(self, reason: object) -> None:
        log.debug("heartbeat not written: {reason}", reason=reason)


def _text(value: float | str) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return str(value)
