"""The upstream pool against real example backends: pipelining, reconnects, hedging."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from clients.sync_client import ExampleClient
from gateway.processes import (
    ExampleBackend,
    example_backend_argv,
    start_example_backend,
    start_gateway,
    start_process,
)

pytestmark = pytest.mark.integration


def concurrent_backend() -> ExampleBackend:
    """An example backend answering each connection's calls concurrently (``--concurrent``),
    slow calls after 1 s; the caller stops it."""
    argv = [*example_backend_argv(delay=1.0), "--concurrent", "--slow-delay", "1.0"]
    return ExampleBackend.from_process(start_process(argv))


def test_pipelined_replies_are_matched_by_seqid(tmp_path: Path) -> None:
    """With ``pipelining = true`` and one upstream connection, a fast call overtakes a slow
    one on a backend that answers out of order, and both get their reply."""
    config = tmp_path / "gw.toml"
    config.write_text("[backends.default]\nconnections = 1\npipelining = true\n")
    with (
        concurrent_backend() as backend,
        start_gateway(backend=backend.address, config=config, node_id="pipe") as gw,
    ):
        slow: list[str] = []
        worker = threading.Thread(
            target=lambda: slow.append(ExampleClient(gw.host, gw.port).alert("slow-one"))
        )
        worker.start()
        time.sleep(0.2)
        with ExampleClient(gw.host, gw.port) as client:
            stats = client.backend_stats()  # answered while alertSupervisor still sleeps
        assert not slow and stats["alertSupervisor"] >= 1
        worker.join(timeout=10)
    assert slow == ["ack:slow-one"]


def test_gateway_reconnects_when_the_backend_comes_back() -> None:
    """After the backend restarts on the same port the gateway serves again by itself."""
    backend = start_example_backend()
    port = backend.port
    with start_gateway(backend=backend.address, node_id="reconnect") as gw:
        with ExampleClient(gw.host, gw.port) as client:
            assert client.alert("before") == "ack:before"
        backend.stop()
        with ExampleClient(gw.host, gw.port) as client, pytest.raises(Exception, match="unreach"):
            client.alert("while-down")
        backend = start_example_backend(port=port)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with ExampleClient(gw.host, gw.port) as client:
                        assert client.alert("after") == "ack:after"
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        finally:
            backend.stop()


def test_hedged_idempotent_call_answered_by_the_faster_replica(tmp_path: Path) -> None:
    """An idempotent method with replicas is hedged: a stalled replica does not delay it."""
    with (
        start_example_backend("poetry", delay=5.0) as stalled,
        start_example_backend("poetry", delay=0.0) as healthy,
    ):
        config = tmp_path / "gw.toml"
        config.write_text(
            f'[backends.default]\naddress = "{stalled.address}"\n'
            f'replicas = ["{healthy.address}"]\nhedge_after = 0.1\n'
            "[methods.getPoem]\nidempotent = true\ntimeout = 10\n"
        )
        with start_gateway(config=config, node_id="hedge") as gw:
            for i in range(4):  # round robin puts the stalled replica first half of the time
                with ExampleClient(gw.host, gw.port, timeout=3) as client:
                    assert f"hedge-{i}" in client.get_poem(f"hedge-{i}")
        with ExampleClient(healthy.host, healthy.port) as client:
            assert client.backend_stats("poetry")["getPoem"] == 4
