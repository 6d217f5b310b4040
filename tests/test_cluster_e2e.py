"""Cross-node coalescing end to end: real redis-server, backends, gateway nodes and clients.

Every process runs on loopback and is stopped by PID in a fixture's ``finally``. Tests that
only make calls share one module-scoped 3-node cluster and use messages of their own, so
their call keys never collide; tests that kill a node or Redis start processes of their own.
Backend calls are counted by the example backend itself (on arrival), never by the gateway.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis as redis_py
from thrift.transport import TTransport

from clients.calls import GET_POEM, encode_call, protocol_factory
from clients.sync_client import ExampleClient
from gateway.cluster.keys import KeySchema
from gateway.examples.handlers import _poem_reply as poem
from gateway.localredis import RedisServer
from gateway.processes import (
    ExampleBackend,
    GatewayProcess,
    backend_count,
    call_once,
    gateway_argv,
    gateway_cli,
    healthz,
    metric,
    run_herd,
    start_example_backend,
    start_process,
    wait_for,
    wait_for_redis_mode,
)
from gateway.thrift import ProtocolKind, call_identity

pytestmark = pytest.mark.integration

T = TypeVar("T")

SUPERVISOR_DELAY = 1.0  # long enough that a whole herd arrives while the first call runs
HMAC_SECRET = "e2e-shared-secret"
NODE_IDS = ("e2e-a", "e2e-b", "e2e-c")
PROTOCOLS = ("binary", "compact")


@dataclass
class Cluster:
    """Three gateway nodes on one Redis in front of the example backends."""

    redis: RedisServer
    supervisor: ExampleBackend
    poetry: ExampleBackend | None
    nodes: list[GatewayProcess]
    client_calls: int = 0  # calls sent through the nodes (what `gateway status` must total)

    def node(self, node_id: str) -> GatewayProcess:
        return next(n for n in self.nodes if n.node_id == node_id)


# -- polling and HTTP ---------------------------------------------------------------------


def http_get(node: GatewayProcess, path: str) -> tuple[int, str]:
    """Status and body of an admin endpoint (the tests that check the HTTP status itself)."""
    try:
        with urllib.request.urlopen(f"{node.admin_url}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def cache_hits(node: GatewayProcess) -> float:
    hits = metric(node.admin_url, "gateway_cache_hits_total")
    assert hits is not None, f"gateway_cache_hits_total not in /metrics of {node.node_id}"
    return hits


# -- backends and clients -----------------------------------------------------------------


def concurrent_calls(
    cluster: Cluster,
    count: int,
    call: Callable[[ExampleClient], T],
    nodes: Sequence[GatewayProcess] | None = None,
) -> list[T | Exception]:
    """``count`` clients, round-robin over ``nodes`` and binary/compact, call at the same moment.

    Every connection is open before anyone calls (a barrier releases them together), so the
    calls overlap the backend's delay rather than the TCP handshakes.
    """
    targets = list(nodes or cluster.nodes)
    clients: list[ExampleClient] = []
    try:
        for i in range(count):
            node = targets[i % len(targets)]
            protocol = PROTOCOLS[i % len(PROTOCOLS)]
            clients.append(ExampleClient(node.host, node.port, protocol=protocol, timeout=15.0))
        barrier = threading.Barrier(count)

        def one(client: ExampleClient) -> T | Exception:
            barrier.wait(timeout=10)
            try:
                return call(client)
            except Exception as exc:  # reported in the result list, checked by the test
                return exc

        cluster.client_calls += count
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(one, clients))
    finally:
        for client in clients:
            client.close()


def herd(cluster: Cluster, clients: int) -> dict[str, Any]:
    """``python -m clients.herd`` over every node (1 key, 1 round); its --json summary."""
    summary = run_herd(
        [n.address for n in cluster.nodes],
        "--clients", str(clients), "--keys", "1", "--rounds", "1",
        "--protocols", ",".join(PROTOCOLS), "--timeout", "20",
        timeout=60,
    )  # fmt: skip
    cluster.client_calls += clients
    return summary


def gateway_status(cluster: Cluster) -> dict[str, Any]:
    """``gateway status --redis URL --json`` as a real subprocess."""
    status = start_process(gateway_cli("status", "--redis", cluster.redis.url, "--json"))
    try:
        line = status.wait_for_line(r"^\{", timeout=15).string
    finally:
        status.stop()
    report: dict[str, Any] = json.loads(line)
    return report


# -- process fixtures -----------------------------------------------------------------------


def start_nodes(
    ids: Sequence[str], *, backend: str, redis_url: str, config: Path
) -> list[GatewayProcess]:
    """Spawn every node, then wait for each (their startups overlap); if any fails, stop
    them all (by PID) and raise."""
    processes = []
    try:
        for node_id in ids:
            argv = gateway_argv(
                backend=backend, config=config, node_id=node_id, redis=redis_url, admin=True
            )
            processes.append(start_process(argv))
        return [GatewayProcess.from_process(process) for process in processes]
    except BaseException:
        for process in processes:
            process.stop()
        raise


@contextmanager
def running_cluster(
    redis: RedisServer, config_dir: Path, config_text: str, *, poetry: bool = False
) -> Iterator[Cluster]:
    """Backends plus three nodes in cluster mode; everything stopped by PID on exit."""
    supervisor = start_example_backend("supervisor", delay=SUPERVISOR_DELAY)
    poetry_backend: ExampleBackend | None = None
    nodes: list[GatewayProcess] = []
    try:
        if poetry:
            poetry_backend = start_example_backend("poetry")
            config_text = config_text.replace("POETRY_ADDRESS", poetry_backend.address)
        config = config_dir / "gateway.toml"
        config.write_text(config_text)
        nodes = start_nodes(
            NODE_IDS, backend=supervisor.address, redis_url=redis.url, config=config
        )
        wait_for_redis_mode(nodes, "cluster")
        yield Cluster(redis, supervisor, poetry_backend, nodes)
    finally:
        for node in nodes:
            node.stop()
        if poetry_backend is not None:
            poetry_backend.stop()
        supervisor.stop()


SHARED_CONFIG = f"""
[backends.poetry]
address = "POETRY_ADDRESS"

[methods.getPoem]
backend = "poetry"
mode = "cache"
ttl = 30

[redis]
hmac_secret = "{HMAC_SECRET}"
"""

FAST_LEASE_CONFIG = """
[redis]
lease_ttl = 1.0
"""


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the tests that only make calls: alertSupervisor in coalesce mode,
    getPoem in cache mode (ttl 30 s) on a Poetry backend, every node with the HMAC secret."""
    server = RedisServer().start()
    try:
        config_dir = tmp_path_factory.mktemp("shared-cluster")
        with running_cluster(server, config_dir, SHARED_CONFIG, poetry=True) as cluster:
            yield cluster
    finally:
        server.close()


@pytest.fixture
def own_cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of the test's own (it kills things), with lease_ttl = 1 s."""
    with running_cluster(redis_server, tmp_path, FAST_LEASE_CONFIG) as cluster:
        yield cluster


# -- shared-cluster tests -------------------------------------------------------------------


def test_herd_over_three_nodes_reaches_backend_once(shared: Cluster) -> None:
    """300 identical alertSupervisor calls spread over three nodes make one backend call and
    every caller gets "ack:" plus its own message."""
    before = backend_count(shared.supervisor)

    summary = herd(shared, clients=300)

    assert summary["ok"] == 300, summary
    assert summary["wrong_replies"] == 0, summary
    assert summary["errors"] == 0, summary
    assert summary["stray_replies"] == 0, summary
    assert backend_count(shared.supervisor) - before == 1


def test_repeat_after_completion_calls_backend_once_more(shared: Cluster) -> None:
    """In coalesce mode a herd repeated after the first one finished makes exactly one more
    backend call (finished results are never replayed)."""
    message = "e2e-repeat"
    before = backend_count(shared.supervisor)
    first = concurrent_calls(shared, 30, lambda c: c.alert(message))
    assert first == ["ack:" + message] * 30
    assert backend_count(shared.supervisor) - before == 1

    again = concurrent_calls(shared, 30, lambda c: c.alert(message))

    assert again == ["ack:" + message] * 30
    assert backend_count(shared.supervisor) - before == 2


def test_cache_mode_serves_every_node_from_shared_entry(shared: Cluster) -> None:
    """Within the TTL a cache-mode result fetched through one node is a cache hit on every
    node, with no further backend call."""
    assert shared.poetry is not None
    title = "e2e-cache"
    first = call_once(shared.nodes[0], lambda c: c.get_poem(title), protocol="binary")
    shared.client_calls += 1
    assert first == poem(title)
    backend_after_first = backend_count(shared.poetry, "getPoem")
    hits_before = {n.node_id: cache_hits(n) for n in shared.nodes}

    # One call at a time: concurrent ones would join each other on the node first.
    replies = [
        call_once(node, lambda c: c.get_poem(title), protocol=protocol)
        for node in shared.nodes
        for protocol in PROTOCOLS
    ]
    shared.client_calls += len(replies)

    assert replies == [poem(title)] * 6
    assert backend_count(shared.poetry, "getPoem") == backend_after_first
    hits_after = {n.node_id: cache_hits(n) for n in shared.nodes}
    assert {k: hits_after[k] - hits_before[k] for k in hits_after} == dict.fromkeys(NODE_IDS, 2)


def test_tampered_cache_entry_is_rejected_and_call_still_succeeds(shared: Cluster) -> None:
    """With hmac_secret set, a node never replays a shared cache entry whose payload was
    altered in Redis: it counts an hmac_reject and answers correctly from the backend."""
    assert shared.poetry is not None
    title = "e2e-tamper"
    leader, other = shared.nodes[0], shared.nodes[1]
    before = backend_count(shared.poetry, "getPoem")
    assert call_once(leader, lambda c: c.get_poem(title), protocol="binary") == poem(title)
    shared.client_calls += 1
    assert backend_count(shared.poetry, "getPoem") - before == 1

    # Flip the case of one byte of the title inside the stored Thrift reply: the envelope
    # and the Thrift message both stay well-formed, only the HMAC can tell.
    message = encode_call(protocol_factory("binary"), GET_POEM, 1, title=title)
    identity = call_identity(
        message, ProtocolKind.BINARY, backend="poetry", upstream_name="getPoem"
    )
    cache_key = KeySchema().cache(identity.key)
    client = redis_py.Redis.from_url(shared.redis.url)
    node_key = KeySchema().node(other.node_id)
    try:
        stored = client.get(cache_key)
        assert isinstance(stored, bytes), f"no cache entry at {cache_key}"
        head, header, payload = stored.split(b"\n", 2)
        at = payload.index(title.encode())
        tampered = payload[:at] + bytes([payload[at] ^ 0x20]) + payload[at + 1 :]
        ttl_ms = client.pttl(cache_key)
        assert isinstance(ttl_ms, int) and ttl_ms > 0
        client.set(cache_key, b"\n".join((head, header, tampered)), px=ttl_ms)
        rejects_before = int(float(client.hget(node_key, "hmac_rejects") or 0))

        reply = call_once(other, lambda c: c.get_poem(title), protocol="compact")
        shared.client_calls += 1

        assert reply == poem(title)
        assert backend_count(shared.poetry, "getPoem") - before == 2
        wait_for(
            lambda: int(float(client.hget(node_key, "hmac_rejects") or 0)),
            lambda rejects: rejects == rejects_before + 1,
            f"hmac_rejects of {other.node_id} in its heartbeat",
        )
    finally:
        client.close()


def test_status_reports_alive_nodes_and_matching_counters(shared: Cluster) -> None:
    """`gateway status --json` lists the three nodes alive, its backend_calls total equals
    what the backends counted and its calls total equals the client calls made."""
    assert shared.poetry is not None
    poetry = shared.poetry
    replies = concurrent_calls(shared, 6, lambda c: c.alert("e2e-status"))
    assert replies == ["ack:e2e-status"] * 6

    def backends_counted() -> int:
        return backend_count(shared.supervisor) + backend_count(poetry, "getPoem")

    report = wait_for(
        lambda: gateway_status(shared),
        lambda r: (
            r["totals"]["calls"] == shared.client_calls
            and r["totals"]["backend_calls"] == backends_counted()
        ),
        f"status totals: calls {shared.client_calls}, backend_calls as the backends counted",
    )

    assert [(n["node_id"], n["state"]) for n in report["nodes"]] == [
        (node_id, "alive") for node_id in NODE_IDS
    ]
    assert report["totals"]["alive"] == 3
    assert sum(n["backend_calls"] for n in report["nodes"]) == backends_counted()


def test_metrics_has_call_counter_and_latency_histogram(shared: Cluster) -> None:
    """A node's /metrics carries gateway_calls_total and the gateway_call_latency_seconds
    histogram."""
    node = shared.nodes[2]
    assert (
        call_once(node, lambda c: c.alert("e2e-metrics"), protocol="compact") == "ack:e2e-metrics"
    )
    shared.client_calls += 1

    status, text = http_get(node, "/metrics")

    assert status == 200
    lines = text.splitlines()
    assert any(line.startswith(f'gateway_calls_total{{node="{node.node_id}"}} ') for line in lines)
    assert "# TYPE gateway_call_latency_seconds histogram" in lines
    for suffix in ("_bucket", "_count", "_sum"):
        assert any(
            line.startswith(f"gateway_call_latency_seconds{suffix}{{")
            and 'method="alertSupervisor"' in line
            for line in lines
        ), suffix


def test_healthz_is_ok_in_cluster_mode(shared: Cluster) -> None:
    """Every node's /healthz answers 200 with "redis": "cluster"."""
    for node in shared.nodes:
        status, body = http_get(node, "/healthz")

        assert status == 200
        assert json.loads(body)["redis"] == "cluster"


# -- tests with processes of their own ------------------------------------------------------


def test_leader_killed_mid_call_followers_still_answered(own_cluster: Cluster) -> None:
    """When the leading node is killed with SIGKILL mid-call, callers on the other nodes are
    answered after a follower takes over, with at most two backend calls in all."""
    message = "e2e-leader-dies"
    leader, followers = own_cluster.nodes[0], own_cluster.nodes[1:]
    before = backend_count(own_cluster.supervisor)
    with ThreadPoolExecutor(3) as pool:

        def alert(node: GatewayProcess) -> Future[str]:
            return pool.submit(call_once, node, lambda c: c.alert(message), protocol="binary")

        led = alert(leader)
        wait_for(
            lambda: backend_count(own_cluster.supervisor) - before,
            lambda n: n == 1,
            "the leader's backend call",
        )
        followed = [alert(node) for node in followers]
        wait_for(
            lambda: [(healthz(n.admin_url) or {}).get("in_flight") for n in followers],
            lambda in_flight: in_flight == [1, 1],
            "a call in flight on each follower node",
        )
        time.sleep(0.2)  # their decide round trip: both now follow the leader's lease

        killed_at = time.monotonic()
        leader.kill()

        answers = [f.result(timeout=15) for f in followed]
        answered_after = time.monotonic() - killed_at
        with pytest.raises(TTransport.TTransportException):
            led.result(timeout=15)  # the dead node's own caller loses its connection

    assert answers == ["ack:" + message] * 2
    assert backend_count(own_cluster.supervisor) - before <= 2
    print(f"followers answered {answered_after:.2f}s after kill -9 of the leader")


def test_redis_down_nodes_keep_serving_locally(own_cluster: Cluster) -> None:
    """With Redis killed, every node switches to local mode and still answers its calls."""
    message = "e2e-redis-down"
    before = backend_count(own_cluster.supervisor)

    own_cluster.redis.stop()
    wait_for_redis_mode(own_cluster.nodes, "local")
    replies = concurrent_calls(own_cluster, 12, lambda c: c.alert(message))

    assert replies == ["ack:" + message] * 12
    # Local coalescing still joins each node's identical calls: at most one call per node.
    assert backend_count(own_cluster.supervisor) - before <= len(own_cluster.nodes)


def test_redis_restart_restores_cross_node_dedupe(own_cluster: Cluster) -> None:
    """After Redis comes back on the same port, the running nodes return to cluster mode by
    themselves and a herd across them reaches the backend once again."""
    own_cluster.redis.stop()
    wait_for_redis_mode(own_cluster.nodes, "local")

    own_cluster.redis.start()
    restarted_at = time.monotonic()
    wait_for_redis_mode(own_cluster.nodes, "cluster", timeout=20.0)
    recovered_after = time.monotonic() - restarted_at
    before = backend_count(own_cluster.supervisor)
    summary = herd(own_cluster, clients=90)

    assert summary["ok"] == 90, summary
    assert summary["wrong_replies"] == 0, summary
    assert backend_count(own_cluster.supervisor) - before == 1
    print(f"all nodes back in cluster mode {recovered_after:.2f}s after redis restarted")


def test_node_logs_redis_down_and_up_once_each(own_cluster: Cluster) -> None:
    """A node logs "redis down: local-only coalescing" once when Redis dies and "redis up:
    cluster mode" once more when it is back."""
    node = own_cluster.nodes[0]
    down = f"redis down: local-only coalescing (node {node.node_id})"
    up = f"redis up: cluster mode (node {node.node_id})"
    node.process.wait_for_line(re.escape(up), stream="stderr")

    own_cluster.redis.stop()
    node.process.wait_for_line(re.escape(down), stream="stderr")
    own_cluster.redis.start()
    wait_for_redis_mode([node], "cluster", timeout=20.0)
    # The admin port may report cluster mode before the log line is read from stderr.
    wait_for(
        lambda: sum(up in line for line in node.process.stderr_lines),
        lambda n: n >= 2,
        "the second 'redis up' line",
        10,
    )

    lines = list(node.process.stderr_lines)
    assert sum(down in line for line in lines) == 1, "\n".join(lines[-30:])
    assert sum(up in line for line in lines) == 2  # at start, and after the restart
