"""redis+cluster:// against a real Redis Cluster: slot routing, redirects, notices, failover.

In-process tests share one module-scoped 3-primary cluster (no replicas) and touch only
keys of their own; the end-to-end test builds its own 3-primary, 3-replica cluster, runs
three ``gateway serve`` nodes on it and kills a primary. Every process is stopped by PID.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import pytest_twisted
import redis as redis_py
from fleet import (
    alerts_in_background,
    backend_ready,
    herd_summary,
    seconds_until_mode,
    spawn_backend,
    start_gateways,
    start_herd,
    wait_for_status,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from gateway.cluster.node import ClusterNode
from gateway.cluster.options import ClusterOptions
from gateway.contracts import BackendReply, MethodPolicy, ReplyKind
from gateway.localredis import LocalCluster, RedisServer, run
from gateway.processes import backend_count, wait_for_redis_mode
from gateway.redis.connection import RedisCommandError
from gateway.redis.shards import ClusterRedis
from gateway.redis.slots import key_slot
from gateway.redis.url import ClusterURL, parse_redis_target
from gateway.stats import NodeStats
from gateway.testing import DirectCoordinator

pytestmark = pytest.mark.integration

COALESCE = MethodPolicy(mode="coalesce", timeout=5.0)


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


def fast_backoff() -> list[float]:
    return [0.05] * 10_000


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await sleep(0.02)


@pytest.fixture(scope="module")
def shards() -> Iterator[LocalCluster]:
    """Three primaries without replicas, shared by the in-process tests of this module."""
    cluster = LocalCluster(primaries=3, replicas=0).start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest_twisted.async_yield_fixture
async def client(shards: LocalCluster) -> AsyncIterator[ClusterRedis]:
    target = parse_redis_target(shards.url)
    assert isinstance(target, ClusterURL)
    redis = ClusterRedis(target, reactor, backoff=fast_backoff)
    redis.start()
    try:
        await wait_until(lambda: redis.is_up)
        yield redis
    finally:
        await redis.stop()


def keys_on_every_shard(cluster: LocalCluster, prefix: str, per_shard: int = 2) -> list[str]:
    """Keys ``prefix{n}`` chosen so that every primary holds ``per_shard`` of them."""
    chosen: dict[int, list[str]] = {i: [] for i in range(len(cluster.primaries))}
    n = 0
    while any(len(v) < per_shard for v in chosen.values()):
        key = f"{prefix}{{{n}}}"
        owner = cluster.primaries.index(cluster.primary_of_slot(key_slot(key)))
        if len(chosen[owner]) < per_shard:
            chosen[owner].append(key)
        n += 1
    return [k for v in chosen.values() for k in v]


@pytest_twisted.ensureDeferred
async def test_commands_go_to_the_primary_of_their_slot(
    shards: LocalCluster, client: ClusterRedis
) -> None:
    """SET/GET of keys on every shard succeed, and each key lands on its slot's primary."""
    keys = keys_on_every_shard(shards, "route")
    await gatherResults([client.execute("SET", k, f"v-{k}") for k in keys])
    replies = await gatherResults([client.execute("GET", k) for k in keys])
    assert replies == [f"v-{k}".encode() for k in keys]
    for key in keys:
        owner = shards.primary_of_slot(key_slot(key))
        assert run(owner, "CLUSTER", "COUNTKEYSINSLOT", key_slot(key)) >= 1


@pytest_twisted.ensureDeferred
async def test_scripts_route_by_their_first_key(shards: LocalCluster, client: ClusterRedis) -> None:
    """EVAL with keys of one hash tag runs on that tag's shard, for tags on every shard."""
    source = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[2])"
    for key in keys_on_every_shard(shards, "script", per_shard=1):
        reply = await client.execute("EVAL", source, 2, f"{key}:a", f"{key}:a", "x")
        assert reply == b"x"


@pytest_twisted.ensureDeferred
async def test_script_load_reaches_every_primary(
    shards: LocalCluster, client: ClusterRedis
) -> None:
    """SCRIPT LOAD is broadcast, so EVALSHA finds the script whichever shard it runs on."""
    source = "return 'loaded-everywhere'"
    sha = await client.execute("SCRIPT", "LOAD", source)
    assert isinstance(sha, bytes)
    for primary in shards.primaries:
        assert run(primary, "SCRIPT", "EXISTS", sha.decode()) == [True]


@pytest_twisted.ensureDeferred
async def test_moved_reply_is_followed_and_map_refreshed(
    shards: LocalCluster, client: ClusterRedis
) -> None:
    """A slot the client maps to the wrong primary earns MOVED: the command still succeeds."""
    key = "moved{moved-test}"
    slot = key_slot(key)
    right = shards.primary_of_slot(slot)
    wrong = next(p for p in shards.primaries if p is not right)
    client._map.assign(slot, ("127.0.0.1", wrong.port))  # type: ignore[union-attr]  # test
    before = client.refreshes
    assert await client.execute("SET", key, "v") == "OK"
    assert run(right, "GET", key) == "v"
    await wait_until(lambda: client.refreshes > before)
    assert client._map.owner(slot) == ("127.0.0.1", right.port)  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_ask_reply_sends_asking_to_the_importing_node(
    shards: LocalCluster, client: ClusterRedis
) -> None:
    """During a slot migration a new key is written to the importing node via ASK + ASKING."""
    key = "ask{ask-test}"
    slot = key_slot(key)
    source = shards.primary_of_slot(slot)
    target = next(p for p in shards.primaries if p is not source)
    source_id, target_id = (str(run(p, "CLUSTER", "MYID")) for p in (source, target))
    run(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    run(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    try:
        assert await client.execute("SET", key, "asked") == "OK"
        assert run(target, "CLUSTER", "COUNTKEYSINSLOT", slot) == 1
        assert run(source, "CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    finally:
        # Finish the migration the way redis-cli does: both nodes give the slot to target,
        # then hand it back so the other tests see the layout they expect.
        for node in (target, source):
            run(node, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        run(target, "DEL", key)
        for node in (source, target):
            run(node, "CLUSTER", "SETSLOT", slot, "NODE", source_id)


@pytest_twisted.ensureDeferred
async def test_error_replies_are_not_redirects(client: ClusterRedis) -> None:
    """An ordinary error reply (WRONGTYPE) comes back as RedisCommandError, not retried."""
    await client.execute("HSET", "errors{1}", "f", "v")
    with pytest.raises(RedisCommandError, match="WRONGTYPE"):
        await client.execute("GET", "errors{1}")


class Backend:
    """Counts calls per key; each answers after ``delay``."""

    def __init__(self, delay: float = 0.3) -> None:
        self.delay = delay
        self.calls: dict[str, int] = {}

    def for_key(self, key: str) -> Any:
        def call() -> Deferred[BackendReply]:
            self.calls[key] = self.calls.get(key, 0) + 1
            reply = BackendReply(f"reply-{key}".encode(), "binary", ReplyKind.SUCCESS)
            return deferLater(reactor, self.delay, lambda: reply)

        return call


@pytest_twisted.ensureDeferred
async def test_nodes_coalesce_keys_on_every_shard(shards: LocalCluster) -> None:
    """Three in-process nodes, calls for keys on all shards: one backend call per key."""
    fallbacks = [DirectCoordinator() for _ in range(3)]
    nodes = [
        ClusterNode(
            shards.url,
            node_id=f"inproc-{i}",
            stats=NodeStats(),
            fallback=fallbacks[i],
            clock=reactor,
            options=ClusterOptions(lease_ttl=2.0, handoff_ttl=5.0),
            backoff=fast_backoff,
        )
        for i in range(3)
    ]
    for node in nodes:
        node.start()
    try:
        await gatherResults([node.when_ready() for node in nodes])
        for primary in shards.primaries:
            run(primary, "CONFIG", "RESETSTAT")
        keys = [f"Svc.get:{n:032x}" for n in range(24)]
        backend = Backend()
        calls = [
            node.coordinator.execute(key, COALESCE, backend.for_key(key))
            for key in keys
            for node in nodes
            for _ in range(2)
        ]
        outcomes = await gatherResults(calls)
        assert backend.calls == {key: 1 for key in keys}
        assert [o.reply.message for o in outcomes] == [
            f"reply-{key}".encode() for key in keys for _ in range(6)
        ]
        assert [f.calls for f in fallbacks] == [0, 0, 0]
        assert all(evalsha_calls(p) > 0 for p in shards.primaries), "a shard saw no script"
    finally:
        await gatherResults([node.stop() for node in nodes])


# -- end to end: gateway serve processes, a failover -------------------------------------


def evalsha_calls(server: RedisServer) -> int:
    """EVALSHA commands ``server`` ran since its last CONFIG RESETSTAT."""
    stats = run(server, "INFO", "commandstats")
    if isinstance(stats, dict):
        entry = stats.get("cmdstat_evalsha", {})
        return int(entry.get("calls", 0)) if isinstance(entry, dict) else 0
    for line in str(stats).splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def test_gateway_nodes_on_a_cluster_survive_a_primary_failover() -> None:
    """Three nodes on a 3-primary cluster report in through heartbeats on the shards; a
    primary is killed, calls are all answered while its replica is promoted, every node is
    back in cluster mode, and then a herd over 30 keys (on every shard) reaches the
    backend once per key."""
    keys = 30
    herd = ("--clients", "90", "--keys", str(keys), "--rounds", "1")
    cluster = LocalCluster(primaries=3, replicas=1)
    with ExitStack() as stack:
        stack.callback(cluster.close)
        spawned = spawn_backend(stack, delay=1.0)  # imports Twisted while the cluster forms
        cluster.start()
        backend = backend_ready(spawned)
        nodes = start_gateways(stack, 3, backend=backend.address, redis=cluster.url, prefix="rc")
        wait_for_redis_mode(nodes, "cluster", timeout=30)
        # Heartbeats (one a second) land on whichever shard holds each key.
        report = wait_for_status(cluster.url, lambda r: r["totals"]["alive"] == 3)
        assert {n["redis_mode"] for n in report["nodes"]} == {"cluster"}

        victim = cluster.primaries[0]
        killed_at = time.monotonic()
        victim.stop()  # SIGKILL by PID
        wait_for_redis_mode(nodes, "local", timeout=10)
        meanwhile = alerts_in_background(stack, nodes, "during-failover")  # served locally
        during = start_herd(stack, nodes, *herd)  # runs while the replica is promoted
        recovered = seconds_until_mode(nodes, "cluster", since=killed_at, timeout=30)
        print(f"\nredis cluster: kill -9 of a primary -> every node in cluster mode: "
              f"{recovered:.2f} s")  # fmt: skip
        promoted = cluster.wait_for_promotion(victim, timeout=5)
        summary = herd_summary(during)
        assert (summary["ok"], summary["errors"]) == (90, 0)
        assert [f.result(timeout=20) for f in meanwhile] == [
            f"ack:during-failover-{i}" for i in range(3)
        ]

        primaries = [promoted, *cluster.primaries[1:]]
        for primary in primaries:
            run(primary, "CONFIG", "RESETSTAT")
        before = backend_count(backend)
        summary = herd_summary(start_herd(stack, nodes, *herd))
        assert (summary["ok"], summary["errors"]) == (90, 0)
        assert backend_count(backend) - before == keys
        assert all(evalsha_calls(p) > 0 for p in primaries), "a shard saw no script"


def test_sync_client_reads_heartbeat_keys_across_shards(shards: LocalCluster) -> None:
    """gateway status's client routes by slot: keys on every shard read back through it."""
    from gateway.redis.redispy import sync_client

    client = sync_client(shards.url, decode_responses=True)
    try:
        keys = keys_on_every_shard(shards, "gw:node:status", per_shard=1)
        for key in keys:
            client.hset(key, mapping={"calls": "1"})
        assert [client.hgetall(k) for k in keys] == [{"calls": "1"}] * len(keys)
    finally:
        client.close()
        assert isinstance(client, redis_py.RedisCluster)
