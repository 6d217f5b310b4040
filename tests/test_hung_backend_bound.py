"""An idempotent method whose backend hangs costs at most two backend calls, however many
nodes follow it (issue 16, "also check": each node in turn led and timed out, so the
backend saw N calls and the last caller waited N x timeout).

Black-box: a redis-server, three ``gateway serve`` nodes, the thriftpy2 counting backend
(``lookup``'s third argument makes it sleep 10 s, far past the method's 1 s timeout) and
thriftpy2 clients. The rule: a timed-out call is handed back once (the leader's own network
may be the trouble, so another node tries); a leader that took a handed-back call over
shares its own timeout with everyone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from counting import CountingBackend, client, cluster, wait_for, write_config
from thriftpy2.thrift import TApplicationException

from gateway.localredis import RedisServer
from gateway.processes import GatewayProcess

pytestmark = pytest.mark.integration

METHODS = "[methods.lookup]\nidempotent = true\ntimeout = 1\n"


@pytest.fixture
def backend() -> Iterator[CountingBackend]:
    counting = CountingBackend(multiplexed=False, client_timeout=0)
    yield counting
    counting.stop()


def test_a_hung_backend_is_called_at_most_twice_for_three_nodes(
    tmp_path: Path,
    backend: CountingBackend,
    nodes: list[GatewayProcess],
    redis_server: RedisServer,
) -> None:
    """Node a leads lookup("hung"), b and c follow; every attempt times out: every caller
    gets the timeout error, and the backend saw the call twice (a's, one takeover's)."""
    config = write_config(tmp_path, backend, redis=redis_server.url, methods=METHODS)
    a, b, c = cluster(nodes, config, "a", "b", "c")
    errors: dict[str, str] = {}

    def call(node: GatewayProcess) -> None:
        with client(node.address, multiplexed=False) as gw:
            try:
                gw.lookup("hung", {}, 10.0)
            except TApplicationException as exc:
                errors[node.node_id] = str(exc.message)

    threads = [threading.Thread(target=call, args=(a,))]
    threads[0].start()
    wait_for(lambda: backend.count("Supervisor", "lookup", "hung") == 1)
    threads += [threading.Thread(target=call, args=(n,)) for n in (b, c)]
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(errors) == ["a", "b", "c"], errors
    assert all("timeout" in message for message in errors.values()), errors
    assert backend.count("Supervisor", "lookup", "hung") == 2
