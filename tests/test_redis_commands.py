"""The Redis commands a node sends, counted through MONITOR on a real redis-server.

Pins the protocol's cost per flight (leader node and follower node, distinct keys, coalesce
mode) and the background rates (an idle node, a follower watching leaders on other nodes).
Counts are per flight or per second over a window; a "round trip" is a command sent over
the network, "total" adds the commands the scripts run inside Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from benchmarks.redisstats import BACKGROUND, Attributed, CommandLog, attribute
from gateway.cluster.keys import bucket_of
from gateway.cluster.node import ClusterNode
from gateway.cluster.options import ClusterOptions
from gateway.contracts import BackendReply, MethodPolicy, ReplyKind
from gateway.localredis import LocalCluster, RedisServer
from gateway.stats import NodeStats
from gateway.testing import DirectCoordinator

pytestmark = pytest.mark.integration

COALESCE = MethodPolicy(mode="coalesce", timeout=5.0)
OPTIONS = ClusterOptions(lease_ttl=2.0, handoff_ttl=5.0)
FLIGHTS = 32

# Pinned figures (see docs/redis-notes.md for the measured ones).
# Before batching: 2 round trips (decide, complete) and 18 commands per leader flight, 2
# round trips (decide, result GET) per follower flight. Now a turn's 32 flights share one
# decide, and the 32 completes of another turn one complete.
LEADER_ROUND_TRIPS_PER_FLIGHT = 2 / FLIGHTS
LEADER_TOTAL_PER_FLIGHT = 11.0  # script-internal commands included (measured: 10.1)
FOLLOWER_ROUND_TRIPS_PER_FLIGHT = 0.125  # one decide, one MGET for the turn
IDLE_COMMANDS_PER_SECOND = 4.5  # ~3.8 on average; a 5 s window sees 3.6-4.2
# One liveness check per tick (10 ticks/s by default) for every watched session; before,
# PTTL + PUBSUB NUMSUB per watched session per tick: 21 commands/s per leader node.
WATCH_COMMANDS_PER_SECOND = 11.0


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


def backend(delay: float) -> Any:
    def call() -> Deferred[BackendReply]:
        d: Deferred[BackendReply] = Deferred()
        reply = BackendReply(b"reply", "binary", ReplyKind.SUCCESS)
        reactor.callLater(delay, d.callback, reply)
        return d

    return call


class Held:
    """Backend calls that answer only when :meth:`answer_all` answers them, in one turn."""

    def __init__(self) -> None:
        self.pending: list[Deferred[BackendReply]] = []

    def __call__(self) -> Deferred[BackendReply]:
        d: Deferred[BackendReply] = Deferred()
        self.pending.append(d)
        return d

    async def answer_all(self, count: int) -> None:
        while len(self.pending) < count:
            await sleep(0.01)
        for d in self.pending:
            d.callback(BackendReply(b"reply", "binary", ReplyKind.SUCCESS))


def ports(node: ClusterNode) -> set[int]:
    """The local ports of a node's command and subscriber connections."""
    found = set()
    for conn in (node.redis, node.subscriber):
        proto = conn._proto  # type: ignore[attr-defined]  # the live txredisapi protocol
        found.add(proto.transport.getHost().port)
    return found


@dataclass
class Counts:
    round_trips: int  # call-path commands sent over the network
    total: int  # round trips plus the commands their scripts ran
    names: dict[str, int]  # of the round trips
    inner: dict[str, int]  # of the commands the scripts ran


def counts_of(commands: Iterable[Attributed], node: ClusterNode) -> Counts:
    """The call-path commands of ``node`` (heartbeat, session renewal, keepalive left out)."""
    mine = ports(node)
    round_trips = total = 0
    names: dict[str, int] = {}
    inner: dict[str, int] = {}
    for c in commands:
        port = c.client.rpartition(":")[2]
        if not port.isdigit() or int(port) not in mine or c.parent in BACKGROUND:
            continue
        total += 1
        if c.internal:
            inner[c.name] = inner.get(c.name, 0) + 1
        else:
            round_trips += 1
            names[c.name] = names.get(c.name, 0) + 1
    return Counts(round_trips, total, names, inner)


def all_of(commands: Iterable[Attributed], node: ClusterNode) -> int:
    """Every command ``node`` sent over the network, background included."""
    mine = ports(node)
    return sum(
        1
        for c in commands
        if not c.internal and c.client.rpartition(":")[2].isdigit()
        if int(c.client.rpartition(":")[2]) in mine
    )


class Nodes:
    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.nodes: list[ClusterNode] = []

    async def start(self, node_id: str) -> ClusterNode:
        node = ClusterNode(
            self.server.url,
            node_id=node_id,
            stats=NodeStats(),
            fallback=DirectCoordinator(),
            clock=reactor,
            options=OPTIONS,
        )
        node.start()
        self.nodes.append(node)
        await node.when_ready()
        return node

    async def stop(self) -> None:
        await gatherResults([n.stop() for n in self.nodes])


@pytest_twisted.async_yield_fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[Nodes]:
    n = Nodes(redis_server)
    try:
        yield n
    finally:
        await n.stop()


def keys(prefix: str, n: int = FLIGHTS) -> list[str]:
    return [f"Svc.alertSupervisor:{prefix}-{i:04d}" for i in range(n)]


@pytest_twisted.ensureDeferred
async def test_leader_commands_per_distinct_key_flight(
    nodes: Nodes, redis_server: RedisServer
) -> None:
    """A leader node spends at most the pinned Redis commands per distinct-key flight."""
    leader = await nodes.start("lead")
    await nodes.start("other")  # another node subscribed: notices would reach it
    log = CommandLog(redis_server.port).start()
    # Started in one reactor turn, as a herd of distinct calls arrives; answered in another.
    held = Held()
    calls = [leader.coordinator.execute(k, COALESCE, held) for k in keys("L")]
    await held.answer_all(FLIGHTS)
    await gatherResults(calls)
    counts = counts_of(attribute(log.stop()), leader)
    print(f"leader: {counts} per flight {counts.round_trips / FLIGHTS}, {counts.total / FLIGHTS}")
    assert leader.coordinator.counters.leads == FLIGHTS
    assert counts.round_trips / FLIGHTS <= LEADER_ROUND_TRIPS_PER_FLIGHT
    assert counts.total / FLIGHTS <= LEADER_TOTAL_PER_FLIGHT
    # Nobody followed: no result key for followers, no notice to every node's subscription.
    assert "publish" not in counts.inner


@pytest_twisted.ensureDeferred
async def test_follower_commands_per_flight(nodes: Nodes, redis_server: RedisServer) -> None:
    """A node following another node's leaders spends at most the pinned round trips per
    flight on the call path (its liveness checks are pinned per second, below)."""
    leader = await nodes.start("lead")
    follower = await nodes.start("follow")
    names = keys("F")
    led = [leader.coordinator.execute(k, COALESCE, backend(0.3)) for k in names]
    await sleep(0.1)  # every lease taken
    log = CommandLog(redis_server.port).start()
    followed = [follower.coordinator.execute(k, COALESCE, backend(0.3)) for k in names]
    await gatherResults(led + followed)
    counts = counts_of(attribute(log.stop()), follower)
    liveness = ("pttl", "pubsub", "sessions")
    call_path = sum(n for name, n in counts.names.items() if name not in liveness)
    print(f"follower: {counts} call path per flight {call_path / FLIGHTS}")
    assert follower.coordinator.counters.leads == 0
    assert call_path / FLIGHTS <= FOLLOWER_ROUND_TRIPS_PER_FLIGHT


@pytest_twisted.ensureDeferred
async def test_idle_node_commands_per_second(nodes: Nodes, redis_server: RedisServer) -> None:
    """An idle node sends at most the pinned commands per second (heartbeat, session, PING)."""
    node = await nodes.start("idle")
    await sleep(1.0)
    log = CommandLog(redis_server.port).start()
    await sleep(5.0)
    sent = all_of(attribute(log.stop()), node)
    print(f"idle: {sent / 5.0} commands/s")
    assert sent / 5.0 <= IDLE_COMMANDS_PER_SECOND


@pytest.mark.parametrize("leaders", [1, 3])
@pytest_twisted.ensureDeferred
async def test_follower_liveness_checks_per_second(
    nodes: Nodes, redis_server: RedisServer, leaders: int
) -> None:
    """A follower's liveness checks cost at most the pinned commands per second, however
    many leader nodes it watches."""
    heads = [await nodes.start(f"lead{i}") for i in range(leaders)]
    follower = await nodes.start("follow")
    led = [
        h.coordinator.execute(k, COALESCE, backend(2.5))
        for i, h in enumerate(heads)
        for k in keys(f"W{i}", 4)
    ]
    await sleep(0.1)
    followed = [
        follower.coordinator.execute(k, COALESCE, backend(2.5))
        for i in range(leaders)
        for k in keys(f"W{i}", 4)
    ]
    await sleep(0.3)  # every follower registered and waiting
    log = CommandLog(redis_server.port).start()
    await sleep(1.5)
    commands = attribute(log.stop())
    await gatherResults(led + followed)
    counts = counts_of(commands, follower)
    checks = sum(counts.names.get(name, 0) for name in ("pttl", "pubsub", "sessions"))
    per_second = checks / 1.5
    print(f"watching {leaders}: {counts} -> {per_second} checks/s, total {counts.total / 1.5}/s")
    assert follower.coordinator.counters.leads == 0
    assert per_second <= WATCH_COMMANDS_PER_SECOND


@pytest_twisted.ensureDeferred
async def test_redis_cluster_batches_a_turn_per_slot() -> None:
    """On a Redis Cluster, the flights one reactor turn starts share one decide and one
    complete per slot (bucket), and each still gets its own backend call and reply."""
    cluster = LocalCluster(primaries=3, replicas=0).start()
    node = ClusterNode(
        cluster.url,
        node_id="sharded",
        stats=NodeStats(),
        fallback=DirectCoordinator(),
        clock=reactor,
        options=OPTIONS,
    )
    node.start()
    try:
        await node.when_ready()
        per_bucket: dict[str, list[str]] = {}
        n = 0
        while len(per_bucket) < 4 or any(len(v) < 12 for v in per_bucket.values()):
            key = f"Svc.alertSupervisor:slot-{n}"
            n += 1
            bucket = bucket_of(key)
            wanted = bucket in per_bucket or len(per_bucket) < 4
            if wanted and len(per_bucket.setdefault(bucket, [])) < 12:
                per_bucket[bucket].append(key)
        names = [k for v in per_bucket.values() for k in v]
        pending: list[tuple[str, Deferred[BackendReply]]] = []

        def call_for(key: str) -> Any:
            def call() -> Deferred[BackendReply]:
                d: Deferred[BackendReply] = Deferred()
                pending.append((key, d))
                return d

            return call

        calls = [node.coordinator.execute(k, COALESCE, call_for(k)) for k in names]
        while len(pending) < len(names):
            await sleep(0.01)
        for key, d in pending:  # every backend call answers in the same turn
            d.callback(BackendReply(key.encode(), "binary", ReplyKind.SUCCESS))
        outcomes = await gatherResults(calls)
        assert [o.reply.message for o in outcomes] == [k.encode() for k in names]
        batcher = node.coordinator._steps.batcher  # the node's view of what it sent
        assert (batcher.batches, batcher.items) == (8, 96)  # 4 slots x (decide, complete)
    finally:
        await node.stop()
        cluster.close()
