"""Liveness errs toward "alive", black-box (issue 16, defect 5): a leader paused for less
than ``session_ttl`` is never deposed, with or without its pub/sub connection reconnecting.

Real processes: a redis-server, two ``gateway serve`` nodes with the default timings
(``session_ttl`` 1 s), the thriftpy2 counting backend and thriftpy2 clients. The leader is
paused with SIGSTOP at the worst moment of its renewal cycle (just before a renewal is
due), so the test does not depend on luck. That a killed leader is still replaced within
its session is tests/test_failover.py (and here: by its closed connections, before its key
lapses); the figures are benchmarks/failover.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from counting import CountingBackend, client, cluster, wait_for, write_config

from benchmarks.redisstats import local_ports_to
from gateway.localredis import RedisServer
from gateway.processes import GatewayProcess

pytestmark = pytest.mark.integration

PAUSE = 0.8  # seconds: shorter than the default session_ttl (1 s)


@pytest.fixture
def backend() -> Iterator[CountingBackend]:
    slow = CountingBackend(multiplexed=False, page_delay=3.0)
    yield slow
    slow.stop()


@pytest.fixture
def slow_backend() -> Iterator[CountingBackend]:
    """Pages take 6 s: still underway however long finding the right moment to kill takes."""
    slow = CountingBackend(multiplexed=False, page_delay=6.0)
    yield slow
    slow.stop()


def session_key(r: redis.Redis, node_id: str) -> str:
    """The session key of ``node_id``'s process (its heartbeat names the session)."""
    wait_for(lambda: r.hget(f"gw:node:{{{node_id}}}", "session") is not None)
    session = r.hget(f"gw:node:{{{node_id}}}", "session")
    assert isinstance(session, bytes)
    return f"gw:session:{session.decode()}"


def stop_just_before_a_renewal(r: redis.Redis, key: str, pid: int) -> None:
    """SIGSTOP ``pid`` when its session key is at its lowest remaining time of a renewal
    cycle (the worst moment for a pause): the low point is learnt over a few cycles first."""
    lowest = min(_pttl(r, key) for _ in _samples(1.2))
    deadline = time.monotonic() + 5.0
    while _pttl(r, key) > lowest + 25:
        assert time.monotonic() < deadline, "never saw the session key near its low point"
    os.kill(pid, signal.SIGSTOP)


def _samples(seconds: float) -> range:
    return range(int(seconds / 0.005))


def _pttl(r: redis.Redis, key: str) -> int:
    time.sleep(0.005)
    left = r.pttl(key)
    assert isinstance(left, int) and left > 0, f"session key {key} gone (PTTL {left})"
    return left


def kill_subscriber(r: redis.Redis, redis_port: int, pid: int) -> None:
    """CLIENT KILL the pub/sub connection of process ``pid`` (its notices and alive channel)."""
    ports = local_ports_to(pid, redis_port)
    clients: list[dict[str, Any]] = r.client_list()
    subscribers = [
        c for c in clients if int(c["addr"].rpartition(":")[2]) in ports and int(c["sub"]) > 0
    ]
    assert len(subscribers) == 1, subscribers
    r.client_kill_filter(_id=subscribers[0]["id"])


def paused_leader_calls(
    tmp_path: Path,
    backend: CountingBackend,
    nodes: list[GatewayProcess],
    redis_server: RedisServer,
    *,
    kill_pubsub: bool,
) -> int:
    """Node a leads a slow call that node b follows; a is paused for PAUSE seconds mid-call
    (its subscriber killed meanwhile if ``kill_pubsub``): the backend calls for the key."""
    config = write_config(tmp_path, backend, redis=redis_server.url)
    a, b = cluster(nodes, config, "a", "b")
    r = redis.Redis(port=redis_server.port)
    key = session_key(r, "a")
    answers: list[Any] = []

    def call(node: GatewayProcess) -> None:
        with client(node.address, multiplexed=False) as c:
            answers.append(c.page("pause"))

    threads = [threading.Thread(target=call, args=(a,))]
    threads[0].start()
    wait_for(lambda: backend.count("Supervisor", "page", "pause") == 1)
    threads.append(threading.Thread(target=call, args=(b,)))
    threads[1].start()
    time.sleep(0.2)  # b follows a's lease by now
    stop_just_before_a_renewal(r, key, a.pid)
    try:
        if kill_pubsub:
            kill_subscriber(r, redis_server.port, a.pid)
        time.sleep(PAUSE)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    for thread in threads:
        thread.join(timeout=15)
    assert len(answers) == 2
    return backend.count("Supervisor", "page", "pause")


def test_a_leader_paused_for_less_than_its_session_is_not_deposed(
    tmp_path: Path,
    backend: CountingBackend,
    nodes: list[GatewayProcess],
    redis_server: RedisServer,
) -> None:
    """A leader SIGSTOPped for 0.8 s (< session_ttl 1 s) just before a session renewal was
    due keeps its call: its follower is answered from that one backend call."""
    assert paused_leader_calls(tmp_path, backend, nodes, redis_server, kill_pubsub=False) == 1


def test_a_paused_leader_whose_pubsub_reconnects_is_not_deposed(
    tmp_path: Path,
    backend: CountingBackend,
    nodes: list[GatewayProcess],
    redis_server: RedisServer,
) -> None:
    """A leader SIGSTOPped for 0.8 s whose pub/sub connection Redis closes meanwhile (so
    nobody is subscribed to its alive channel) keeps its call: one backend call."""
    assert paused_leader_calls(tmp_path, backend, nodes, redis_server, kill_pubsub=True) == 1


def test_a_killed_leader_is_taken_over_by_its_closed_connections_before_its_key_lapses(
    tmp_path: Path,
    slow_backend: CountingBackend,
    nodes: list[GatewayProcess],
    redis_server: RedisServer,
) -> None:
    """kill -9 of a leader: its follower takes the call over while the session key still
    lives (a whole session_ttl after the last renewal): death was seen from both of its
    connections being closed, not from the key's lapse."""
    backend = slow_backend
    config = write_config(tmp_path, backend, redis=redis_server.url)
    a, b = cluster(nodes, config, "a", "b")
    r = redis.Redis(port=redis_server.port)
    key = session_key(r, "a")
    answers: list[Any] = []

    def follow() -> None:
        with client(b.address, multiplexed=False) as c:
            answers.append(c.page("killed"))

    hang_up = threading.Thread(target=lambda: _call_and_hang_up(a))
    hang_up.start()
    wait_for(lambda: backend.count("Supervisor", "page", "killed") == 1)
    follower = threading.Thread(target=follow)
    follower.start()
    time.sleep(0.2)  # b follows a's lease by now
    lowest = min(_pttl(r, key) for _ in _samples(1.2))
    while _pttl(r, key) > lowest + 25:  # just before a renewal: the key's shortest life
        pass
    a.kill()
    wait_for(lambda: backend.count("Supervisor", "page", "killed") == 2)
    assert r.exists(key) == 1, "taken over only once the session key had lapsed"
    follower.join(timeout=15)
    hang_up.join(timeout=15)
    assert len(answers) == 1


def _call_and_hang_up(node: GatewayProcess) -> None:
    with (
        contextlib.suppress(Exception),  # the connection dies with the node
        client(node.address, multiplexed=False, timeout_ms=10_000) as c,
    ):
        c.page("killed")


@pytest.fixture
def redis_without_client_commands() -> Iterator[RedisServer]:
    """A redis-server where CLIENT is disabled (as some ACLs and managed services do)."""
    server = RedisServer(extra_args=["--rename-command", "CLIENT", ""]).start()
    yield server
    server.stop()


def test_without_client_commands_a_killed_leader_is_taken_over_at_its_key_lapse(
    tmp_path: Path,
    slow_backend: CountingBackend,
    nodes: list[GatewayProcess],
    redis_without_client_commands: RedisServer,
) -> None:
    """Where CLIENT ID / CLIENT LIST cannot run, the rule still errs toward alive: a killed
    leader is taken over only once its session key lapsed (one more backend call), and the
    node that could not name its connection logged one warning saying so."""
    backend, server = slow_backend, redis_without_client_commands
    config = write_config(tmp_path, backend, redis=server.url)
    a, b = cluster(nodes, config, "a", "b")
    r = redis.Redis(port=server.port)
    key = session_key(r, "a")
    assert r.get(key) == b"-"  # no client id to name
    answers: list[Any] = []

    def follow() -> None:
        with client(b.address, multiplexed=False) as c:
            answers.append(c.page("killed"))

    hang_up = threading.Thread(target=lambda: _call_and_hang_up(a))
    hang_up.start()
    wait_for(lambda: backend.count("Supervisor", "page", "killed") == 1)
    follower = threading.Thread(target=follow)
    follower.start()
    time.sleep(0.3)  # b follows a's lease by now
    a.kill()
    wait_for(lambda: backend.count("Supervisor", "page", "killed") == 2)
    assert r.exists(key) == 0
    follower.join(timeout=15)
    hang_up.join(timeout=15)
    assert len(answers) == 1
    assert any(
        "session ended" in line or "its key lapsed" in line for line in b.process.stderr_lines
    )
