"""Cross-node coalescing through a real redis-server: several ClusterNodes in one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
import redis as redis_py
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher

from gateway.cluster.envelope import Envelope, encode
from gateway.cluster.keys import KeySchema
from gateway.cluster.node import ClusterNode
from gateway.cluster.options import ClusterOptions
from gateway.contracts import BackendCall, BackendReply, MethodPolicy, ReplyKind, Source
from gateway.errors import (
    BackendTimeout,
    BackendUnavailable,
    BackendUnreachable,
    GatewayError,
    Overloaded,
    RemoteCallFailed,
    ShuttingDown,
)
from gateway.flights import FlightTable
from gateway.localredis import RedisServer, free_port
from gateway.stats import NodeStats
from gateway.testing import DirectCoordinator

pytestmark = pytest.mark.integration

KEY = "Svc.get:0123456789abcdef0123456789abcdef"
COALESCE = MethodPolicy(mode="coalesce", timeout=5.0)
CACHE = MethodPolicy(mode="cache", ttl=5.0, timeout=5.0)
FAST = ClusterOptions(lease_ttl=0.5, handoff_ttl=5.0)


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await sleep(0.01)


def fast_backoff() -> list[float]:
    return [0.05] * 10_000


class Backend:
    """Counts calls; each answers after ``delay`` (None: only when the test fires it)."""

    def __init__(
        self,
        delay: float | None = 0.1,
        fail: GatewayError | None = None,
        fail_calls: int | None = None,
    ) -> None:
        self.delay = delay
        self.fail = fail
        self.fail_calls = fail_calls  # fail only this many first calls (None: all)
        self.calls = 0
        self.pending: list[Deferred[BackendReply]] = []

    def __call__(self) -> Deferred[BackendReply]:
        self.calls += 1
        reply = BackendReply(f"reply-{self.calls}".encode(), "binary", ReplyKind.SUCCESS)
        d: Deferred[BackendReply] = Deferred()
        self.pending.append(d)
        failing = self.fail_calls is None or self.calls <= self.fail_calls
        if self.delay is not None:
            if self.fail is not None and failing:
                reactor.callLater(self.delay, d.errback, self.fail)
            else:
                reactor.callLater(self.delay, d.callback, reply)
        return d


class Cluster:
    """Builds started, ready nodes on one Redis and stops them all afterwards."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.nodes: list[ClusterNode] = []
        self.fallbacks: dict[str, DirectCoordinator] = {}
        self.stats: dict[str, NodeStats] = {}

    async def node(
        self,
        node_id: str,
        options: ClusterOptions = FAST,
        keepalive: float | None = 5.0,
        reply_timeout: float = 1.0,
    ) -> ClusterNode:
        self.fallbacks[node_id] = DirectCoordinator()
        self.stats[node_id] = NodeStats()
        node = ClusterNode(
            self.server.url,
            node_id=node_id,
            stats=self.stats[node_id],
            fallback=self.fallbacks[node_id],
            clock=reactor,
            options=options,
            address=f"127.0.0.1:{9000 + len(self.nodes)}",
            reply_timeout=reply_timeout,
            keepalive=keepalive,
            backoff=fast_backoff,
        )
        node.start()
        self.nodes.append(node)
        await node.when_ready()
        return node

    async def nodes_named(self, *names: str, options: ClusterOptions = FAST) -> list[ClusterNode]:
        return [await self.node(name, options) for name in names]

    async def stop(self) -> None:
        await gatherResults([n.stop() for n in self.nodes])


@pytest_twisted.async_yield_fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[Cluster]:
    c = Cluster(redis_server)
    try:
        yield c
    finally:
        await c.stop()


def execute(node: ClusterNode, backend: BackendCall, policy: MethodPolicy = COALESCE) -> Any:
    return node.coordinator.execute(KEY, policy, backend)


def client(server: RedisServer) -> redis_py.Redis:
    return redis_py.Redis.from_url(server.url)


@pytest_twisted.ensureDeferred
async def test_herd_across_nodes_reaches_backend_once(cluster: Cluster) -> None:
    """Identical calls spread over three nodes make one backend call and all get its reply."""
    nodes = await cluster.nodes_named("a", "b", "c")
    backend = Backend(delay=0.2)
    outcomes = await gatherResults([execute(n, backend) for n in nodes for _ in range(3)])
    assert backend.calls == 1
    assert {o.reply.message for o in outcomes} == {b"reply-1"}
    assert sorted(o.source.value for o in outcomes).count("backend") == 1


@pytest_twisted.ensureDeferred
async def test_coalesce_repeat_after_completion_calls_backend_again(cluster: Cluster) -> None:
    """In coalesce mode a call made after the previous one finished goes to the backend."""
    a, b = await cluster.nodes_named("a", "b")
    backend = Backend(delay=0.01)
    first = await execute(a, backend)
    second = await execute(b, backend)
    assert backend.calls == 2
    assert (first.reply.message, second.reply.message) == (b"reply-1", b"reply-2")
    assert second.source is Source.BACKEND


@pytest_twisted.ensureDeferred
async def test_cache_mode_serves_other_nodes_within_ttl(cluster: Cluster) -> None:
    """A cache-mode reply is served from the shared cache on another node within its ttl."""
    a, b = await cluster.nodes_named("a", "b")
    backend = Backend(delay=0.01)
    await execute(a, backend, CACHE)
    cached = await execute(b, backend, CACHE)
    assert backend.calls == 1
    assert cached.source is Source.CACHE
    assert cached.reply.message == b"reply-1"


@pytest_twisted.ensureDeferred
async def test_stale_entry_is_served_while_one_refresh_runs(cluster: Cluster) -> None:
    """Past its ttl a cache entry is served stale at once to everyone while one refresh runs."""
    nodes = await cluster.nodes_named("a", "b", "c")
    policy = MethodPolicy(mode="cache", ttl=0.2, stale_ttl=5.0, timeout=5.0)
    backend = Backend(delay=0.1)
    await execute(nodes[0], backend, policy)
    await sleep(0.3)
    herd = await gatherResults([execute(n, backend, policy) for n in nodes for _ in range(2)])
    assert {o.source for o in herd} == {Source.STALE}
    assert {o.reply.message for o in herd} == {b"reply-1"}
    await wait_until(lambda: backend.calls == 2 and all(d.called for d in backend.pending))
    await sleep(0.05)  # the refresh's complete script lands right after the backend reply
    fresh = await execute(nodes[1], backend, policy)
    assert (fresh.source, fresh.reply.message, backend.calls) == (Source.CACHE, b"reply-2", 2)


@pytest_twisted.ensureDeferred
async def test_ambiguous_failure_is_shared_with_followers(cluster: Cluster) -> None:
    """A non-idempotent leader's timeout (the backend may have done the work) reaches its
    followers as RemoteCallFailed with the same code, so nobody repeats the call."""
    a, b = await cluster.nodes_named("a", "b")
    backend = Backend(delay=0.2, fail=BackendTimeout("gateway: backend timeout after 5s"))
    lead = execute(a, backend, CACHE)
    await wait_until(lambda: backend.calls == 1)  # a holds the lease before b asks
    follow = execute(b, backend, CACHE)
    with pytest.raises(BackendTimeout):
        await lead
    with pytest.raises(RemoteCallFailed) as err:
        await follow
    assert (err.value.message, err.value.code, backend.calls) == (
        "gateway: backend timeout after 5s",
        6,
        1,
    )


@pytest.mark.parametrize(
    "local_failure",
    [Overloaded("gateway: overloaded"), BackendUnreachable("gateway: backend unreachable")],
    ids=["overloaded", "unreachable"],
)
@pytest_twisted.ensureDeferred
async def test_leader_local_failure_is_handed_back_not_shared(
    cluster: Cluster, local_failure: GatewayError
) -> None:
    """The leader node's own trouble (its queue full, its connection down) fails only its own
    callers: its followers on another node decide again, one leads, and they get the reply."""
    a, b = await cluster.nodes_named("a", "b")
    backend = Backend(delay=0.2, fail=local_failure, fail_calls=1)
    lead = execute(a, backend)
    await wait_until(lambda: backend.calls == 1)
    follow = execute(b, backend)
    with pytest.raises(type(local_failure)):
        await lead
    outcome = await follow
    assert (outcome.source, outcome.reply.message, backend.calls) == (
        Source.BACKEND,
        b"reply-2",
        2,
    )
    assert a.coordinator.counters.handed_back == 1


@pytest_twisted.ensureDeferred
async def test_failure_is_not_cached(cluster: Cluster) -> None:
    """After a failed cache-mode call the next call goes to the backend again."""
    a, b = await cluster.nodes_named("a", "b")
    failing = Backend(delay=0.01, fail=BackendUnavailable("backend down"))
    with pytest.raises(BackendUnavailable):
        await execute(a, failing, CACHE)
    with client(cluster.server) as r:
        assert r.exists(KeySchema().cache(KEY)) == 0
    retry = await execute(b, Backend(delay=0.01), CACHE)
    assert retry.source is Source.BACKEND


@pytest_twisted.ensureDeferred
async def test_followers_take_over_when_the_leader_dies(cluster: Cluster) -> None:
    """When the leader stops renewing its lease, a follower takes over and all are answered."""
    a, b, c = await cluster.nodes_named("a", "b", "c")
    dead = Backend(delay=None)
    leader = execute(a, dead)
    leader.addErrback(lambda f: None)  # cancelled at the end
    await wait_until(lambda: dead.calls == 1)
    live = Backend(delay=0.05)
    followers = gatherResults([execute(b, live), execute(c, live)])
    await sleep(0.1)
    await a.stop()  # the leader "dies": no renewals, no result
    outcomes = await followers
    leader.cancel()
    assert live.calls == 1
    assert {o.reply.message for o in outcomes} == {b"reply-1"}
    assert b.coordinator.counters.takeovers + c.coordinator.counters.takeovers == 1


@pytest_twisted.ensureDeferred
async def test_follower_deadline_starts_afresh_with_each_leader(cluster: Cluster) -> None:
    """A follower gives every leader it follows the full timeout + lease_ttl: when a takeover
    leader needs nearly the whole timeout, the other follower waits for it instead of
    calling the backend itself."""
    options = ClusterOptions(lease_ttl=0.4, handoff_ttl=5.0, reply_timeout=0.1)
    policy = MethodPolicy(mode="coalesce", timeout=1.0)
    a, b, c = await cluster.nodes_named("a", "b", "c", options=options)
    dead = Backend(delay=None)
    leader = execute(a, dead, policy)
    leader.addErrback(lambda f: None)  # cancelled at the end
    await wait_until(lambda: dead.calls == 1)
    live = Backend(delay=0.9)
    followers = gatherResults([execute(b, live, policy), execute(c, live, policy)])
    await sleep(0.35)  # the leader renews its lease once or twice more, then dies
    await a.stop()
    outcomes = await followers
    leader.cancel()
    assert live.calls == 1
    assert {o.reply.message for o in outcomes} == {b"reply-1"}


@pytest_twisted.ensureDeferred
async def test_pubsub_blip_makes_followers_poll_instead_of_calling(cluster: Cluster) -> None:
    """When only the subscriptions drop (the command connections stay up), a follower polls
    for its leader's result instead of calling the backend."""
    a, b = await cluster.nodes_named("a", "b")
    backend = Backend(delay=0.6)
    lead = execute(a, backend)
    await wait_until(lambda: backend.calls == 1)
    follow = execute(b, backend)
    await sleep(0.1)
    with client(cluster.server) as r:
        assert r.client_kill_filter(_type="pubsub") >= 2
    await lead
    outcome = await follow
    assert (backend.calls, outcome.source, outcome.reply.message) == (1, Source.REMOTE, b"reply-1")


@pytest_twisted.ensureDeferred
async def test_leader_that_lost_its_lease_caches_nothing(cluster: Cluster) -> None:
    """A leader whose lease another node took while it called the backend learns it is
    deposed: it still answers its own callers, but writes no cache entry and leaves the
    newer leader's lease alone."""
    (a,) = await cluster.nodes_named("a")
    backend = Backend(delay=0.4)
    lead = execute(a, backend, CACHE)
    await wait_until(lambda: backend.calls == 1)
    keys = KeySchema()
    with client(cluster.server) as r:
        r.set(keys.lease(KEY), "other/token", px=5000)  # a takeover elsewhere
        outcome = await lead
        assert (outcome.source, outcome.reply.message) == (Source.BACKEND, b"reply-1")
        assert r.get(keys.lease(KEY)) == b"other/token"
        assert r.exists(keys.cache(KEY)) == 0
    assert a.coordinator.counters.deposed == 1


@pytest_twisted.ensureDeferred
async def test_abandoned_lead_lets_followers_take_over_at_once(cluster: Cluster) -> None:
    """A drain that runs out of time abandons the node's lead, which publishes "abandoned":
    a follower on another node takes over at once instead of waiting out the 5 s lease."""
    options = ClusterOptions(lease_ttl=5.0, handoff_ttl=30.0)
    a, b = await cluster.nodes_named("a", "b", options=options)
    flights = FlightTable(reactor)
    stuck = Backend(delay=None)
    caller = flights.join(KEY, lambda: a.coordinator.execute(KEY, COALESCE, stuck))
    caller.addErrback(lambda f: f.trap(ShuttingDown))
    await wait_until(lambda: stuck.calls == 1)
    live = Backend(delay=0.05)
    follow = execute(b, live)
    await sleep(0.1)
    started = time.monotonic()
    assert await flights.drain(0.01) == 1
    outcome = await follow
    assert time.monotonic() - started < 1.0
    assert (live.calls, outcome.source, outcome.reply.message) == (1, Source.BACKEND, b"reply-1")


@pytest_twisted.ensureDeferred
async def test_followers_take_over_when_the_leaders_session_ends(cluster: Cluster) -> None:
    """When the leader's session ends (here: its key is deleted, as when it lapses), its
    followers take the lease over at once, long before the 5 s lease would run out."""
    options = ClusterOptions(lease_ttl=5.0, handoff_ttl=30.0)
    a, b, c = await cluster.nodes_named("a", "b", "c", options=options)
    dead = Backend(delay=None)
    leader = execute(a, dead)
    leader.addErrback(lambda f: None)  # cancelled at the end
    await wait_until(lambda: dead.calls == 1)
    live = Backend(delay=0.05)
    followers = gatherResults([execute(b, live), execute(c, live)])
    await sleep(0.1)
    started = time.monotonic()
    await a.session_keeper.stop()  # deletes the session key: a lapsed session
    outcomes = await followers
    took = time.monotonic() - started
    leader.cancel()
    assert took < 2.0, f"took over after {took:.2f}s: the lease, not the session, ended it"
    assert live.calls == 1 and {o.reply.message for o in outcomes} == {b"reply-1"}
    assert b.coordinator.counters.takeovers + c.coordinator.counters.takeovers == 1


@pytest_twisted.ensureDeferred
async def test_redis_outage_falls_back_then_recovers(cluster: Cluster) -> None:
    """With Redis stopped execute uses the fallback; after a restart cluster mode returns."""
    (a,) = await cluster.nodes_named("a")
    backend = Backend(delay=0.01)
    port = cluster.server.port
    cluster.server.stop()
    await wait_until(lambda: not a.coordinator.cluster_mode)
    down = await execute(a, backend)
    assert (down.source, cluster.fallbacks["a"].calls) == (Source.BACKEND, 1)
    with RedisServer(port=port):  # the same address again
        await a.when_ready()
        up = await execute(a, backend)
        assert (up.source, cluster.fallbacks["a"].calls) == (Source.BACKEND, 1)
        assert a.coordinator.counters.leads == 1


@pytest_twisted.ensureDeferred
async def test_redis_unreachable_at_start_falls_back_until_it_appears() -> None:
    """A node started before its Redis exists uses the fallback, then joins once Redis is up."""
    port = free_port()
    fallback = DirectCoordinator()
    node = ClusterNode(
        f"redis://127.0.0.1:{port}/0",
        node_id="early",
        stats=NodeStats(),
        fallback=fallback,
        clock=reactor,
        options=FAST,
        backoff=fast_backoff,
    )
    node.start()
    try:
        await sleep(0.1)  # a few connection attempts have failed by now
        assert not node.coordinator.cluster_mode
        down = await execute(node, Backend(delay=0.01))
        assert (down.source, fallback.calls) == (Source.BACKEND, 1)
        with RedisServer(port=port):
            await node.when_ready().addTimeout(5.0, reactor)
            assert node.coordinator.cluster_mode
            up = await execute(node, Backend(delay=0.01))
            assert (up.source, fallback.calls, node.coordinator.counters.leads) == (
                Source.BACKEND,
                1,
                1,
            )
    finally:
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_subscriber_connecting_first_at_start_logs_no_redis_down(
    redis_server: RedisServer,
) -> None:
    """At start, pub/sub subscribed before the command connection is up is not an outage:
    the node logs "redis up" once and never "redis down"."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "gateway.cluster":
            lines.append(formatEvent(event))

    node = ClusterNode(
        redis_server.url, node_id="order", stats=NodeStats(), fallback=DirectCoordinator(),
        clock=reactor, options=FAST, backoff=fast_backoff,
    )  # fmt: skip
    globalLogPublisher.addObserver(observe)
    try:
        node.completions.start()  # the subscriber alone first
        await wait_until(lambda: node.completions.is_up)
        node.start()  # then the command connection (the subscriber is already running)
        await node.when_ready().addTimeout(5.0, reactor)
    finally:
        globalLogPublisher.removeObserver(observe)
        await node.stop()
    assert not [line for line in lines if "redis down" in line], lines
    assert len([line for line in lines if "redis up" in line]) == 1, lines


@pytest_twisted.ensureDeferred
async def test_lease_is_renewed_while_the_backend_call_runs(cluster: Cluster) -> None:
    """A backend call longer than lease_ttl keeps its lease: followers wait, nobody takes over."""
    a, b = await cluster.nodes_named("a", "b", options=ClusterOptions(lease_ttl=0.3))
    backend = Backend(delay=1.0)
    lead = execute(a, backend)
    await wait_until(lambda: backend.calls == 1)
    outcomes = await gatherResults([lead, execute(b, backend)])
    assert [o.source for o in outcomes] == [Source.BACKEND, Source.REMOTE]
    assert backend.calls == 1
    assert b.coordinator.counters.takeovers == 0


@pytest_twisted.ensureDeferred
async def test_leader_releases_only_its_own_lease(cluster: Cluster) -> None:
    """Completing deletes the lease only if it still holds the leader's token."""
    (a,) = await cluster.nodes_named("a")
    backend = Backend(delay=None)
    lead = execute(a, backend)
    await wait_until(lambda: backend.calls == 1)
    lease = KeySchema().lease(KEY)
    with client(cluster.server) as r:
        assert r.get(lease) is not None  # the leader's token
        r.set(lease, "other")
        backend.pending[0].callback(BackendReply(b"done", "binary", ReplyKind.SUCCESS))
        outcome = await lead
        assert outcome.source is Source.BACKEND
        assert r.get(lease) == b"other"


@pytest_twisted.ensureDeferred
async def test_follower_wait_is_bounded(cluster: Cluster) -> None:
    """After follower_wait a follower calls the backend itself, long before the lease ends."""
    options = ClusterOptions(follower_wait=0.2, lease_ttl=5.0)
    a, b = await cluster.nodes_named("a", "b", options=options)
    backend = Backend(delay=None)  # the leader's call never answers
    leader = execute(a, backend)
    leader.addErrback(lambda f: None)  # cancelled at the end
    await wait_until(lambda: backend.calls == 1)
    backend.delay = 0.01  # the follower's own call does
    started = time.monotonic()
    outcome = await execute(b, backend)
    elapsed = time.monotonic() - started
    leader.cancel()
    assert backend.calls == 2
    assert outcome.source is Source.BACKEND
    assert 0.15 < elapsed < 1.0


@pytest_twisted.ensureDeferred
async def test_hung_redis_is_detected_and_survived(cluster: Cluster) -> None:
    """A Redis that stops answering (SIGSTOP) means local-only mode, and SIGCONT ends it."""
    a = await cluster.node("a", keepalive=0.1, reply_timeout=0.3)
    assert cluster.server.proc is not None
    pid = cluster.server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        await wait_until(lambda: not a.coordinator.cluster_mode, timeout=3.0)
        outcome = await execute(a, Backend(delay=0.01))
        assert (outcome.source, cluster.fallbacks["a"].calls) == (Source.BACKEND, 1)
    finally:
        os.kill(pid, signal.SIGCONT)
    await a.when_ready()
    await execute(a, Backend(delay=0.01))
    assert (a.coordinator.counters.leads, cluster.fallbacks["a"].calls) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_a_call_on_a_hung_redis_is_answered_through_the_fallback(cluster: Cluster) -> None:
    """With no keepalive to notice it, a call's own Redis command that gets no reply within
    reply_timeout drops the connection: the call is answered through the local fallback,
    in about reply_timeout, not left hanging."""
    a = await cluster.node("a", keepalive=None, reply_timeout=0.3)
    assert cluster.server.proc is not None
    pid = cluster.server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        outcome = await execute(a, Backend(delay=0.01))
        took = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert (outcome.source, cluster.fallbacks["a"].calls) == (Source.BACKEND, 1)
    assert took < 1.5, f"answered after {took:.2f}s"
    await a.when_ready()


@pytest_twisted.ensureDeferred
async def test_followers_fetch_results_too_big_to_inline(cluster: Cluster) -> None:
    """When the envelope is not inlined in the notice, followers GET it and are answered."""
    options = ClusterOptions(lease_ttl=0.5, inline_bytes=8)
    a, b, c = await cluster.nodes_named("a", "b", "c", options=options)
    backend = Backend(delay=0.1)
    lead = execute(a, backend)
    await wait_until(lambda: backend.calls == 1)
    outcomes = await gatherResults([lead, execute(b, backend), execute(c, backend)])
    assert [o.source for o in outcomes] == [Source.BACKEND, Source.REMOTE, Source.REMOTE]
    assert backend.calls == 1


@pytest_twisted.ensureDeferred
async def test_follower_stops_waiting_when_redis_drops(cluster: Cluster) -> None:
    """A follower whose Redis goes away calls the backend at once instead of waiting."""
    a, b = await cluster.nodes_named("a", "b", options=ClusterOptions(lease_ttl=5.0))
    slow = Backend(delay=None)
    leader = execute(a, slow)
    leader.addErrback(lambda f: None)
    await wait_until(lambda: slow.calls == 1)
    follower = execute(b, Backend(delay=0.01))
    await sleep(0.05)
    started = time.monotonic()
    cluster.server.stop()
    outcome = await follower
    assert time.monotonic() - started < 1.0
    assert outcome.source is Source.BACKEND
    leader.cancel()


@pytest_twisted.ensureDeferred
async def test_tampered_result_is_rejected_and_the_call_still_succeeds(cluster: Cluster) -> None:
    """A follower never replays a result with a bad signature; it calls the backend itself."""
    secret = ClusterOptions(lease_ttl=0.5, hmac_secret=b"s3cret")
    (b,) = await cluster.nodes_named("b", options=secret)
    keys, token = KeySchema(), "f" * 32
    forged = encode(Envelope.ok(token, BackendReply(b"evil", "binary", ReplyKind.SUCCESS)), KEY)
    with client(cluster.server) as r:  # a fake leader holding the lease, its result forged
        r.set(keys.lease(KEY), token, px=5000)
        r.set(keys.result(KEY, token), forged, px=5000)
    backend = Backend(delay=0.01)
    outcome = await execute(b, backend)
    assert (outcome.reply.message, outcome.source) == (b"reply-1", Source.BACKEND)
    assert b.coordinator.counters.hmac_rejects == 1


@pytest_twisted.ensureDeferred
async def test_tampered_cache_entry_is_rejected(cluster: Cluster) -> None:
    """A cache entry whose payload was altered is not served; the backend answers instead."""
    secret = ClusterOptions(lease_ttl=0.5, hmac_secret=b"s3cret")
    a, b = await cluster.nodes_named("a", "b", options=secret)
    backend = Backend(delay=0.01)
    await execute(a, backend, CACHE)
    with client(cluster.server) as r:
        key = KeySchema().cache(KEY)
        r.set(key, r.get(key).replace(b"reply-1", b"reply-X"), keepttl=True)
    outcome = await execute(b, backend, CACHE)
    assert (outcome.reply.message, outcome.source) == (b"reply-2", Source.BACKEND)
    assert b.coordinator.heartbeat_fields()["hmac_rejects"] == 1


@pytest_twisted.ensureDeferred
async def test_rejected_cache_entry_is_replaced(cluster: Cluster) -> None:
    """After a tampered entry is rejected, a fresh signed entry serves the next callers."""
    secret = ClusterOptions(lease_ttl=0.5, hmac_secret=b"s3cret")
    a, b = await cluster.nodes_named("a", "b", options=secret)
    backend = Backend(delay=0.01)
    await execute(a, backend, CACHE)
    with client(cluster.server) as r:
        key = KeySchema().cache(KEY)
        r.set(key, r.get(key).replace(b"reply-1", b"reply-X"), keepttl=True)
    await execute(b, backend, CACHE)  # rejects, drops the entry, leads, writes reply-2
    later = await execute(a, backend, CACHE)
    assert (later.reply.message, later.source) == (b"reply-2", Source.CACHE)
    assert backend.calls == 2


@pytest_twisted.ensureDeferred
async def test_scripts_are_reloaded_after_script_flush(cluster: Cluster) -> None:
    """After SCRIPT FLUSH the next call reloads the scripts (NOSCRIPT) and still works."""
    (a,) = await cluster.nodes_named("a")
    backend = Backend(delay=0.01)
    await execute(a, backend)
    with client(cluster.server) as r:
        r.script_flush()
    outcome = await execute(a, backend)
    assert outcome.reply.message == b"reply-2"
    assert a.coordinator.script_reloads >= 1


@pytest_twisted.ensureDeferred
async def test_large_replies_are_not_shared(cluster: Cluster) -> None:
    """A reply above max_shared_bytes is not handed over: each follower calls for itself."""
    small = ClusterOptions(lease_ttl=0.5, max_shared_bytes=4)
    a, b = await cluster.nodes_named("a", "b", options=small)
    backend = Backend(delay=0.1)
    outcomes = await gatherResults([execute(a, backend, CACHE), execute(b, backend, CACHE)])
    assert backend.calls == 2
    assert {o.source for o in outcomes} == {Source.BACKEND}


@pytest_twisted.ensureDeferred
async def test_password_protected_redis_works() -> None:
    """Both connections authenticate with the URL's password and a herd still coalesces."""
    with RedisServer(password="pw") as server:
        cluster = Cluster(server)
        try:
            a, b = await cluster.nodes_named("a", "b")
            backend = Backend(delay=0.1)
            await gatherResults([execute(a, backend), execute(b, backend)])
            assert backend.calls == 1
        finally:
            await cluster.stop()


@pytest_twisted.ensureDeferred
async def test_heartbeat_writes_expiring_node_keys(cluster: Cluster) -> None:
    """Each node's heartbeat hash appears with an expiry and the node is scored in gw:nodes."""
    (a,) = await cluster.nodes_named("a")
    cluster.stats["a"].calls = 7
    await a.heartbeat.beat()
    with client(cluster.server) as r:
        fields = r.hgetall("gw:node:{a}")
        assert fields[b"calls"] == b"7"
        assert fields[b"redis_mode"] == b"cluster"
        assert 0 < r.pttl("gw:node:{a}") <= 10_000
        assert r.zscore("gw:nodes", "a") is not None


@pytest_twisted.ensureDeferred
async def test_status_json_shows_nodes_and_totals(cluster: Cluster) -> None:
    """``gateway status --json`` lists the live nodes with their counters and the totals."""
    a, b = await cluster.nodes_named("a", "b")
    cluster.stats["a"].calls, cluster.stats["a"].backend_calls = 10, 2
    cluster.stats["b"].calls = 6
    await gatherResults([a.heartbeat.beat(), b.heartbeat.beat()])
    out = subprocess.run(
        status_cli("--redis", cluster.server.url, "--json"),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    report = json.loads(out.stdout)
    assert [(n["node_id"], n["state"], n["calls"]) for n in report["nodes"]] == [
        ("a", "alive", 10),
        ("b", "alive", 6),
    ]
    assert report["totals"]["calls"] == 16
    assert report["totals"]["coalescing_ratio"] == 8.0


def status_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", "status", *args]


@pytest_twisted.ensureDeferred
async def test_status_table_shows_nodes_and_totals(cluster: Cluster) -> None:
    """Without --json ``gateway status`` prints a table row per node and a TOTAL row first
    (the in-flight, hot-key and history sections follow, each after a blank line)."""
    (a,) = await cluster.nodes_named("a")
    cluster.stats["a"].calls, cluster.stats["a"].backend_calls = 9, 3
    await a.heartbeat.beat()
    out = subprocess.run(
        status_cli("--redis", cluster.server.url), capture_output=True, text=True, check=True
    )
    header, row, total = out.stdout.split("\n\n")[0].splitlines()
    assert header.split()[:4] == ["NODE", "STATE", "SEEN", "CALLS"]
    assert row.split()[:2] == ["a", "alive"] and "3.00" in row.split()
    assert total.split()[:2] == ["TOTAL", "1/1"]


@pytest_twisted.ensureDeferred
async def test_status_watch_refreshes_until_ctrl_c(cluster: Cluster) -> None:
    """``--watch`` prints a report every second and exits 0 on Ctrl-C (SIGINT)."""
    (a,) = await cluster.nodes_named("a")
    await a.heartbeat.beat()
    proc = subprocess.Popen(
        status_cli("--redis", cluster.server.url, "--json", "--watch"),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    reports = [json.loads(proc.stdout.readline()) for _ in range(2)]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0
    assert [r["totals"]["nodes"] for r in reports] == [1, 1]
    assert reports[1]["time"] > reports[0]["time"]


def test_status_with_unreachable_redis_exits_1() -> None:
    """``gateway status`` against a port with no Redis prints one error line and exits 1."""
    url = f"redis://:pw@127.0.0.1:{free_port()}/0"
    out = subprocess.run(
        status_cli("--redis", url),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1
    assert "cannot read cluster state" in out.stderr and "pw" not in out.stderr
