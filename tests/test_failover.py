"""Node sessions, black-box: a dead leader is replaced long before its lease runs out, and an
idle node costs Redis only a few commands a second (issue 9, fast failure detection).

Real processes: a redis-server, ``gateway serve`` nodes with their default timings
(``lease_ttl`` 5 s, ``session_ttl`` 1 s), the thriftpy2 counting backend and thriftpy2
clients. The figures themselves (takeover p50/max over many kills) are measured by
``python -m benchmarks.failover``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from counting import CountingBackend, client, cluster, hang_up_after_sending, wait_for, write_config

from benchmarks.redisstats import CommandLog, local_ports_to
from gateway.localredis import RedisServer
from gateway.processes import GatewayProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def backend() -> Iterator[CountingBackend]:
    slow = CountingBackend(multiplexed=False, page_delay=1.0)
    yield slow
    slow.stop()


def test_killed_leader_is_replaced_within_its_session_not_its_lease(
    tmp_path: Path,
    backend: CountingBackend,
    nodes: list[GatewayProcess],
    redis_server: RedisServer,
) -> None:
    """kill -9 of the node leading a call (default 5 s lease): its followers on the other
    nodes take over within its 1 s session, and all are answered after one more backend
    call."""
    config = write_config(tmp_path, backend, redis=redis_server.url)
    a, b, c = cluster(nodes, config, "a", "b", "c")
    hang_up_after_sending(a.address, "page", "kill", multiplexed=False)
    wait_for(lambda: backend.count("Supervisor", "page", "kill") == 1)
    answers: dict[str, tuple[Any, float]] = {}

    def follow(node: GatewayProcess) -> None:
        with client(node.address, multiplexed=False) as c:
            reply = c.page("kill")
            answers[node.node_id] = (reply, time.monotonic())

    followers = [threading.Thread(target=follow, args=(n,)) for n in (b, c)]
    for thread in followers:
        thread.start()
    time.sleep(0.3)  # both follow a's lease by now
    killed = time.monotonic()
    a.kill()
    for thread in followers:
        thread.join(timeout=10)
    assert {reply.call for reply, _ in answers.values()} == {2}
    slowest = max(at for _, at in answers.values()) - killed - 1.0  # minus the backend's 1 s
    assert slowest < 2.0, f"followers answered {slowest:.2f}s after the kill (+1 s backend)"
    assert backend.count("Supervisor", "page", "kill") == 2


def test_an_idle_node_sends_at_most_five_redis_commands_a_second(
    tmp_path: Path,
    backend: CountingBackend,
    nodes: list[GatewayProcess],
    redis_server: RedisServer,
) -> None:
    """An idle node (session renewals, heartbeat, keepalives) sends Redis at most 5 commands
    a second, counted through MONITOR (commands a script runs inside Redis not counted)."""
    config = write_config(tmp_path, backend, redis=redis_server.url)
    (node,) = cluster(nodes, config, "idle")
    time.sleep(1.2)  # past start-up (first beat, script loading)
    ports = local_ports_to(node.pid, redis_server.port)
    log = CommandLog(redis_server.port).start()
    time.sleep(5.0)
    commands = log.stop()
    mine = Counter(
        c.name for c in commands if c.client != "lua" and int(c.client.rpartition(":")[2]) in ports
    )
    assert sum(mine.values()) <= 25, f"{sum(mine.values())} commands in 5 s: {dict(mine)}"
    assert mine["set"] >= 10  # the session really is renewed (every 0.4 s)
