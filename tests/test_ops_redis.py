"""History, hot keys and the in-flight index in a real redis-server, written by a node's
heartbeat and read back by ``gateway status``."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_twisted
import redis as redis_py
from twisted.internet import reactor

from gateway.cluster.node import ClusterNode
from gateway.localredis import RedisServer
from gateway.observe import Observations
from gateway.ops.opskeys import OpsKeys, hot_member, minute_of
from gateway.ops.status import collect, render_report
from gateway.processes import gateway_cli
from gateway.stats import NodeStats
from gateway.testing import DirectCoordinator

pytestmark = pytest.mark.integration

OPS = OpsKeys("gw:")
Node = tuple[ClusterNode, NodeStats, Observations]


@pytest_twisted.async_yield_fixture
async def node(redis_server: RedisServer) -> AsyncIterator[Node]:
    stats, observations = NodeStats(), Observations()
    cluster_node = ClusterNode(
        redis_server.url,
        node_id="n1",
        stats=stats,
        fallback=DirectCoordinator(),
        clock=reactor,
        address="127.0.0.1:9090",
        observations=observations,
    )
    cluster_node.start()
    # Beats are driven by the tests. The one start() sent found Redis not connected yet, so
    # it wrote nothing.
    cluster_node.heartbeat.stop()
    await cluster_node.when_ready()
    try:
        yield cluster_node, stats, observations
    finally:
        await cluster_node.stop()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis_py.Redis]:
    with redis_py.Redis.from_url(redis_server.url, decode_responses=True) as r:
        yield r


@pytest_twisted.ensureDeferred
async def test_history_stream_holds_counter_deltas_per_beat(
    node: Node, client: redis_py.Redis
) -> None:
    """Each beat appends the counters' increase since the previous entry (not totals), the
    in_flight gauge and the mode; the stream expires with the history window."""
    cluster_node, stats, _ = node
    stats.calls, stats.backend_calls = 10, 1
    await cluster_node.heartbeat.beat()
    stats.calls, stats.backend_calls, stats.in_flight = 25, 2, 3
    await cluster_node.heartbeat.beat()
    await cluster_node.heartbeat.beat()
    entries = [fields for _, fields in client.xrange(OPS.history("n1"))]
    assert [(e["calls"], e["backend_calls"], e["in_flight"]) for e in entries] == [
        ("10", "1", "0"),
        ("15", "1", "3"),
        ("0", "0", "3"),
    ]
    assert all(e["redis_mode"] == "cluster" for e in entries)
    assert float(entries[2]["t"]) >= float(entries[1]["t"]) and float(entries[1]["dt"]) >= 0
    assert 0 < client.pttl(OPS.history("n1")) <= 3_600_000


@pytest_twisted.ensureDeferred
async def test_history_stream_is_capped(node: Node, client: redis_py.Redis) -> None:
    """XADD MAXLEN ~ keeps the stream near history_entries (trimmed in whole macro nodes)."""
    cluster_node, stats, _ = node
    cluster_node.heartbeat._history_entries = 10  # a small cap to see it act
    for i in range(300):
        stats.calls = i
        await cluster_node.heartbeat.beat()
    length = client.xlen(OPS.history("n1"))
    assert 10 <= length < 300


@pytest_twisted.ensureDeferred
async def test_hot_keys_are_batched_per_beat_into_the_minute_bucket(
    node: Node, client: redis_py.Redis
) -> None:
    """Recorded flights reach the current minute's zset once per beat, summed per key, with
    previews only for keys recorded with one; both keys expire."""
    cluster_node, _, observations = node
    for _ in range(50):
        observations.hot_keys.record("supervisor.alertSupervisor", "aaaaaaaaaaaa", 20)
    observations.hot_keys.record("poetry.getPoem", "bbbbbbbbbbbb", 7, preview='{1: "spring"}')
    before = time.time()
    await cluster_node.heartbeat.beat()
    observations.hot_keys.record("poetry.getPoem", "bbbbbbbbbbbb", 3)
    await cluster_node.heartbeat.beat()
    minute = minute_of(time.time())
    if minute != minute_of(before):
        pytest.skip("the beats straddled a minute boundary")  # pragma: no cover
    ranked = client.zrevrange(OPS.hot(minute), 0, -1, withscores=True)
    assert ranked == [
        (hot_member("supervisor.alertSupervisor", "aaaaaaaaaaaa"), 1000.0),
        (hot_member("poetry.getPoem", "bbbbbbbbbbbb"), 10.0),
    ]
    assert client.hgetall(OPS.hot_previews(minute)) == {
        hot_member("poetry.getPoem", "bbbbbbbbbbbb"): '{1: "spring"}'
    }
    assert 0 < client.pttl(OPS.hot(minute)) <= 3_600_000
    assert 0 < client.pttl(OPS.hot_previews(minute)) <= 3_600_000


@pytest_twisted.ensureDeferred
async def test_hot_key_buckets_keep_only_their_hottest_members(
    node: Node, client: redis_py.Redis
) -> None:
    """A minute of many cold keys is trimmed to hot_members, the hottest kept."""
    cluster_node, _, observations = node
    cluster_node.heartbeat._hot_members = 5
    for i in range(40):
        observations.hot_keys.record("m.x", f"{i:012x}", i + 1)
    await cluster_node.heartbeat.beat()
    ranked = client.zrevrange(OPS.hot(minute_of(time.time())), 0, -1, withscores=True)
    assert [score for _, score in ranked] == [40.0, 39.0, 38.0, 37.0, 36.0]


@pytest_twisted.ensureDeferred
async def test_status_reports_history_hot_keys_and_error_kinds(
    node: Node, redis_server: RedisServer
) -> None:
    """`gateway status --json` carries history per node, hot keys with their preview, errors
    by kind, the Redis mode, and an empty in_flight while no script writes the index."""
    cluster_node, stats, observations = node
    stats.calls, stats.backend_calls = 40, 4
    observations.hot_keys.record("poetry.getPoem", "bbbbbbbbbbbb", 7, preview="spring")
    observations.errors.count("overloaded")
    await cluster_node.heartbeat.beat()
    done = subprocess.run(
        gateway_cli("status", "--redis", redis_server.url, "--json"),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    report = json.loads(done.stdout)
    assert [(e["calls"], e["backend_calls"]) for e in report["history"]["n1"]] == [(40, 4)]
    assert report["hot_keys"] == [
        {
            "method": "getPoem",
            "backend": "poetry",
            "key_id": "bbbbbbbbbbbb",
            "callers": 7,
            "preview": "spring",
        }
    ]
    assert report["nodes"][0]["errors_by_kind"] == {"overloaded": 1}
    assert report["totals"]["errors_by_kind"] == {"overloaded": 1}
    assert report["in_flight"] == []
    assert report["redis_mode"] == "standalone" and report["redis"]["version"]
    text = subprocess.run(
        gateway_cli("status", "--redis", redis_server.url),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    _nodes, in_flight, hot, history = text.split("\n\n")
    assert in_flight.strip() == "IN FLIGHT: none"
    assert hot.splitlines()[2].split() == ["7", "poetry.getPoem", "bbbbbbbbbbbb", "spring"]
    row = history.splitlines()[2].split()
    assert (row[0], row[2:5]) == ("n1", ["40", "4", "10.00"])  # node, calls, backend, ratio


def seed_flight(
    client: redis_py.Redis,
    bucket: str,
    key: str,
    started: float,
    *,
    node: str | None,
    token: str | None,
    followers: int = 0,
) -> None:
    """An index entry as the call scripts are to write it (see README, in-flight index)."""
    client.zadd(OPS.inflight(bucket), {key: started})
    if node is not None:
        client.hset(OPS.flight(bucket, key), mapping={"node": node, "followers": followers})
    if token is not None:
        client.set(OPS.lease(bucket, key), token)


def test_in_flight_is_read_oldest_first_and_skips_dead_leaders(
    client: redis_py.Redis,
) -> None:
    """Entries of all buckets come back oldest first with leader, followers and age; one
    whose flight hash and lease are both gone (a dead leader) is left out; scores in
    milliseconds are understood too."""
    seconds, micros = client.time()
    now = seconds + micros / 1e6
    key_a = "supervisor.alertSupervisor:" + "a" * 32
    key_b = "poetry.Poetry:getPoem:" + "b" * 32
    key_dead = "supervisor.alertSupervisor:" + "d" * 32
    key_ms = "supervisor.alertSupervisor:" + "c" * 32
    seed_flight(client, "07", key_a, now - 5, node="gw-1", token="gw-1/abc", followers=2)
    seed_flight(client, "3f", key_b, now - 30, node=None, token="gw-2/def")
    seed_flight(client, "07", key_dead, now - 100, node=None, token=None)
    seed_flight(client, "00", key_ms, (now - 12) * 1000, node="gw-3", token=None, followers=1)
    report = collect(client, "gw:")
    rows = [
        (c["method"], c["backend"], c["leader"], c["followers"], round(c["age_s"]), c["key"])
        for c in report["in_flight"]
    ]
    assert rows == [
        ("Poetry:getPoem", "poetry", "gw-2", 0, 30, key_b),
        ("alertSupervisor", "supervisor", "gw-3", 1, 12, key_ms),
        ("alertSupervisor", "supervisor", "gw-1", 2, 5, key_a),
    ]
    text = render_report(report)
    assert "IN FLIGHT (oldest first)" in text and "gw-2" in text


def test_status_tolerates_keys_of_another_type(client: redis_py.Redis) -> None:
    """A stray key of the wrong type where an index, history or hot bucket should be does not
    break the report: that part is just empty."""
    client.set(OPS.inflight("00"), "not a zset")
    client.set(OPS.hot(minute_of(time.time())), "not a zset")
    client.zadd("gw:nodes", {"n9": time.time()})
    client.set(OPS.history("n9"), "not a stream")
    report = collect(client, "gw:")
    assert report["in_flight"] == [] and report["hot_keys"] == []
    assert report["history"] == {"n9": []}
    render_report(report)


@pytest_twisted.ensureDeferred
async def test_a_restarted_node_does_not_inherit_old_fields(
    node: Node, client: redis_py.Redis
) -> None:
    """The first beat of a process replaces the node's hash: an error kind counted by the
    previous process under the same node id is gone; later beats keep the fields."""
    cluster_node, _, observations = node
    client.hset("gw:node:{n1}", mapping={"error.overloaded": 7, "calls": 99})
    observations.errors.count("backend_timeout")
    await cluster_node.heartbeat.beat()
    fields = client.hgetall("gw:node:{n1}")
    assert "error.overloaded" not in fields and fields["error.backend_timeout"] == "1"
    assert fields["calls"] == "0"
    client.hset("gw:node:{n1}", "extra", "kept")
    await cluster_node.heartbeat.beat()
    assert client.hget("gw:node:{n1}", "extra") == "kept"
