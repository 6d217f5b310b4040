"""A backend that accepts connections and never reads costs the gateway bounded memory: calls
past what its socket takes wait in the bounded queue and time out, instead of piling up in
Twisted's write buffer for as long as the connection lives."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from thrift.Thrift import TApplicationException

from benchmarks.common import rss_kib
from benchmarks.pool_scenarios import Caller, Target
from gateway.processes import start_gateway

pytestmark = pytest.mark.integration

CALL_BYTES = 256 * 1024
CALLS = 120


@pytest.fixture
def deaf_backend() -> Iterator[Target]:
    """Accepts connections and never reads a byte from them."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield Target(*server.getsockname()[:2])
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        server.close()


@pytest.mark.parametrize("extra", ["connections = 1\npipelining = true", ""])
def test_calls_to_a_backend_that_never_reads_do_not_pile_up(
    deaf_backend: Target, tmp_path: Path, extra: str
) -> None:
    """120 calls of 256 KiB (30 MiB) to a backend that never reads, pipelined or pooled:
    each fails with a timeout, and the gateway's memory grows by far less than what was
    sent (on the unbounded code it held every byte of every call)."""
    config = tmp_path / "gw.toml"
    config.write_text(
        f"[backends.default]\n{extra}\n"
        '[methods.alertSupervisor]\nmode = "passthrough"\ntimeout = 0.3\n'
    )
    address = f"{deaf_backend.host}:{deaf_backend.port}"
    with start_gateway(backend=address, config=config, node_id="deaf") as gw:
        target = Target(gw.host, gw.port)
        before = rss_kib(gw.pid)
        failures: list[str] = []

        def client(i: int) -> None:
            caller = Caller(target)
            for n in range(CALLS // 6):
                try:
                    caller.alert(f"{i}-{n}-" + "x" * CALL_BYTES)
                except TApplicationException as exc:
                    failures.append(exc.message or "")
            caller.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        grown_mib = (rss_kib(gw.pid) - before) / 1024
    assert len(failures) == CALLS and all("timeout" in f for f in failures), failures[:3]
    assert grown_mib < 12, f"gateway RSS grew {grown_mib:.1f} MiB for 30 MiB sent"
