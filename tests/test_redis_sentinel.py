"""redis+sentinel:// against real sentinels: master discovery, the ROLE check, failovers.

In-process tests share one module-scoped group (a master, a replica, three sentinels) and
ask the sentinels who the master is rather than assuming it, since one of them fails the
group over on purpose. The end-to-end test builds its own group, runs three ``gateway
serve`` nodes on it and kill -9s the master. Every process is stopped by PID.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import pytest_twisted
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
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from gateway.cluster.node import ClusterNode
from gateway.localredis import RedisServer, SentinelGroup, free_port, run
from gateway.processes import backend_count, wait_for_redis_mode
from gateway.redis.connection import RedisUnavailable
from gateway.redis.sentinel import SentinelLocator
from gateway.redis.txredis import connect
from gateway.redis.url import SentinelURL, parse_redis_target
from gateway.stats import NodeStats
from gateway.testing import DirectCoordinator

pytestmark = pytest.mark.integration


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def wait_until(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await sleep(0.02)


def fast_backoff() -> list[float]:
    return [0.05] * 10_000


@pytest.fixture(scope="module")
def group() -> Iterator[SentinelGroup]:
    """A master, a replica and three sentinels shared by this module's in-process tests."""
    sentinels = SentinelGroup(master_name="inproc").start()
    try:
        yield sentinels
    finally:
        sentinels.close()


def sentinel_url(group: SentinelGroup, *extra_hosts: str) -> SentinelURL:
    hosts = ",".join([*extra_hosts, *(s.address for s in group.sentinels)])
    target = parse_redis_target(f"redis+sentinel://{hosts}/{group.master_name}/0")
    assert isinstance(target, SentinelURL)
    return target


def current_roles(group: SentinelGroup) -> tuple[RedisServer, RedisServer]:
    """(master, replica) as the sentinels see them now."""
    address = group.sentinels[0].master_address()
    servers = [group.master, *group.replicas]
    master = next(s for s in servers if ("127.0.0.1", s.port) == address)
    return master, next(s for s in servers if s is not master)


@pytest_twisted.ensureDeferred
async def test_locator_skips_a_dead_sentinel_and_names_the_master(group: SentinelGroup) -> None:
    """A sentinel that refuses connections is skipped; the next one names the master."""
    dead = f"127.0.0.1:{free_port()}"
    locator = SentinelLocator(sentinel_url(group, dead), reactor)
    found = await locator.locate()
    master, _ = current_roles(group)
    assert (found.host, found.port, found.db) == ("127.0.0.1", master.port, 0)


@pytest_twisted.ensureDeferred
async def test_locator_reports_a_master_no_sentinel_knows(group: SentinelGroup) -> None:
    """An unknown master name fails the attempt with a reason naming it."""
    target = parse_redis_target(f"redis+sentinel://{group.sentinels[0].address}/nosuch")
    assert isinstance(target, SentinelURL)
    with pytest.raises(RedisUnavailable, match="'nosuch'"):
        await SentinelLocator(target, reactor).locate()


@pytest_twisted.ensureDeferred
async def test_master_check_refuses_a_replica(group: SentinelGroup) -> None:
    """A stale answer pointing at a replica is refused: the server must say it is a master."""
    _, replica = current_roles(group)
    url = sentinel_url(group).master(("127.0.0.1", replica.port))
    attempt = connect(
        url, reactor, subscriber=False, connect_timeout=2, reply_timeout=2, require_master=True
    )
    with pytest.raises(RedisUnavailable, match="not a master"):
        await attempt


@pytest_twisted.ensureDeferred
async def test_node_follows_a_sentinel_failover_to_the_new_master(group: SentinelGroup) -> None:
    """After SENTINEL FAILOVER both of a node's connections move to the promoted replica
    (the +switch-master watcher reconnects them) and the node is in cluster mode again."""
    node = ClusterNode(
        sentinel_url(group),
        node_id="sentinel-inproc",
        stats=NodeStats(),
        fallback=DirectCoordinator(),
        clock=reactor,
        backoff=fast_backoff,
    )
    node.start()
    try:
        await node.when_ready()
        old, new = current_roles(group)
        assert node.redis.connected_to is not None  # type: ignore[attr-defined]  # a connector
        assert node.redis.connected_to.port == old.port  # type: ignore[attr-defined]
        run(group.sentinels[0], "SENTINEL", "FAILOVER", group.master_name)
        started = time.monotonic()

        def on_new_master() -> bool:
            connections = (node.redis.connected_to, node.subscriber.connected_to)  # type: ignore[attr-defined]
            return node.coordinator.cluster_mode and all(
                c is not None and c.port == new.port for c in connections
            )

        await wait_until(on_new_master)
        print(f"\nsentinel: SENTINEL FAILOVER -> node on the new master: "
              f"{time.monotonic() - started:.2f} s")  # fmt: skip
        assert await node.redis.execute("SET", "sentinel:probe", "x") == "OK"
        assert run(new, "GET", "sentinel:probe") == "x"
        assert node._links.helpers[0].switches >= 1  # the watcher heard +switch-master
    finally:
        await node.stop()


def test_gateway_nodes_follow_a_master_killed_by_sigkill() -> None:
    """Three nodes on a Sentinel-managed master: kill -9 of the master, calls are answered
    local-only meanwhile, the sentinels promote the replica, every node is back in cluster
    mode without a restart, a herd reaches the backend once per key and `gateway status`
    reads the new master."""
    keys = 5
    group = SentinelGroup(master_name="e2e")
    with ExitStack() as stack:
        stack.callback(group.close)
        spawned = spawn_backend(stack, delay=1.0)  # imports Twisted while the group forms
        group.start()
        backend = backend_ready(spawned)
        nodes = start_gateways(stack, 3, backend=backend.address, redis=group.url, prefix="rs")
        wait_for_redis_mode(nodes, "cluster", timeout=30)

        killed_at = time.monotonic()
        group.master.stop()  # SIGKILL by PID
        wait_for_redis_mode(nodes, "local", timeout=10)
        meanwhile = alerts_in_background(stack, nodes, "during-failover")  # served locally
        recovered = seconds_until_mode(nodes, "cluster", since=killed_at, timeout=30)
        print(f"\nredis sentinel: kill -9 of the master -> every node in cluster mode: "
              f"{recovered:.2f} s")  # fmt: skip
        promoted = group.wait_for_new_master(timeout=5)
        assert promoted is group.replicas[0]
        assert [f.result(timeout=20) for f in meanwhile] == [
            f"ack:during-failover-{i}" for i in range(3)
        ]

        before = backend_count(backend)
        summary = herd_summary(
            start_herd(stack, nodes, "--clients", "60", "--keys", str(keys), "--rounds", "1")
        )
        assert (summary["ok"], summary["errors"]) == (60, 0)
        assert backend_count(backend) - before == keys
        report = wait_for_status(group.url, lambda r: r["totals"]["calls"] >= 63)
        assert (report["totals"]["alive"], report["totals"]["backend_calls"]) == (3, keys + 3)
