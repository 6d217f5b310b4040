"""A stale-while-revalidate refresh is joinable (issue 16, "also check"): a caller arriving
after ``stale_ttl`` ran out, while the refresh is still underway, waits for that refresh
instead of starting a second backend call.

Black-box: a real ``gateway serve`` (alone, and as a Redis cluster node), the thriftpy2
counting backend counting arrivals, thriftpy2 clients. ``lookup``'s third argument makes the
backend take 2 s, so the refresh is still running when the stale window closes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from counting import CountingBackend, client, cluster, gateway, write_config

from gateway.localredis import RedisServer
from gateway.processes import GatewayProcess

pytestmark = pytest.mark.integration

METHODS = '[methods.lookup]\nmode = "cache"\nttl = 1\nstale_ttl = 1\n'
DELAY = 2.0  # seconds the backend takes for every lookup of this test


@pytest.fixture
def backend() -> Iterator[CountingBackend]:
    counting = CountingBackend(multiplexed=False)
    yield counting
    counting.stop()


def calls_with_a_refresh_outliving_the_stale_window(
    node: GatewayProcess, backend: CountingBackend
) -> int:
    """Cache lookup("swr"), call again once stale (a refresh starts), then again once the
    stale window is over but the refresh is not: the backend calls for the key."""

    def lookup() -> Any:
        with client(node.address, multiplexed=False) as c:
            return c.lookup("swr", {}, DELAY)

    lookup()
    cached = time.monotonic()  # the entry is fresh for 1 s, stale for 1 s more
    time.sleep(1.3)
    lookup()  # stale: answered at once, a refresh (2 s) starts
    time.sleep(1.0)  # past ttl + stale_ttl; the refresh has ~0.7 s to go
    assert time.monotonic() - cached > 2.0
    last: list[Any] = []
    thread = threading.Thread(target=lambda: last.append(lookup()))
    thread.start()
    thread.join(timeout=15)
    assert len(last) == 1 and last[0].arg == "swr"
    return backend.count("Supervisor", "lookup", "swr")


def test_a_refresh_running_past_the_stale_window_is_joined_on_one_node(
    tmp_path: Path, backend: CountingBackend, nodes: list[GatewayProcess]
) -> None:
    """No Redis: the caller after the stale window joins the running refresh: two backend
    calls in all (the first and the refresh), not three."""
    node = gateway(nodes, write_config(tmp_path, backend, methods=METHODS), "swr")
    assert calls_with_a_refresh_outliving_the_stale_window(node, backend) == 2


def test_a_refresh_running_past_the_stale_window_is_joined_in_a_cluster(
    tmp_path: Path,
    backend: CountingBackend,
    nodes: list[GatewayProcess],
    redis_server: RedisServer,
) -> None:
    """With Redis the same: the caller follows the refresh's lease: two backend calls."""
    config = write_config(tmp_path, backend, redis=redis_server.url, methods=METHODS)
    (node,) = cluster(nodes, config, "swr-c")
    assert calls_with_a_refresh_outliving_the_stale_window(node, backend) == 2
