"""Partial frames cannot pin a node's memory, end to end (issue 16 defect 4): a real
``gateway serve``, raw sockets sending 15 MB framed calls minus their last byte."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import pytest
from thrift.Thrift import TType
from thrift_messages import message

from clients.sync_client import ExampleClient
from gateway.processes import GatewayProcess, metric, start_example_backend, start_gateway, wait_for
from gateway.thrift import ProtocolKind, frame

pytestmark = pytest.mark.integration

SIZE = 15 * 1000 * 1000


def _partial_call() -> bytes:
    """A framed alertSupervisor call of about 15 MB, without its last byte."""
    call = frame(message(ProtocolKind.BINARY, "alertSupervisor", [(1, TType.STRING, b"x" * SIZE)]))
    return call[:-1]


def _send_partials(gw: GatewayProcess, count: int) -> list[socket.socket]:
    """``count`` connections, each having sent one partial call (in threads: the gateway may
    close some while they send)."""
    data = _partial_call()
    socks = [socket.create_connection((gw.host, gw.port), timeout=30) for _ in range(count)]

    def send(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # closed by the gateway meanwhile
            sock.sendall(data)

    threads = [threading.Thread(target=send, args=(sock,)) for sock in socks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return socks


def _closed(sock: socket.socket) -> bool:
    """Whether the gateway closed ``sock`` (EOF or reset; nothing else is ever sent)."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_partial_frames_are_dropped_after_the_default_body_timeout(tmp_path: Path) -> None:
    """With the default config (idle_timeout 0), six connections each holding a 15 MB call
    minus its last byte are closed within body_timeout (10 s) plus a sweep, the node's
    partial bytes fall back to 0, and other clients are still served."""
    with (
        start_example_backend() as backend,
        start_gateway(backend=backend.address, admin=True, node_id="partial") as gw,
    ):
        socks = _send_partials(gw, 6)
        try:
            wait_for(lambda: sum(map(_closed, socks)), lambda n: n == 6, "all six closed", 30)
            assert metric(gw.admin_url, "gateway_partial_bytes") == 0
            assert metric(gw.admin_url, "gateway_partial_closed_total") == 6
            with ExampleClient(gw.host, gw.port) as client:
                assert client.alert("after") == "ack:after"
        finally:
            for sock in socks:
                sock.close()
        lines = [line for line in gw.process.stderr_lines if "body_timeout" in line]
        assert len(lines) == 6  # one line per connection closed


def test_partial_frames_beyond_max_partial_bytes_close_the_largest(tmp_path: Path) -> None:
    """With max_partial_bytes = 40 MB and no body deadline, six 15 MB partial calls leave
    at most two buffered: the others' connections are closed, one log line each."""
    config = tmp_path / "gw.toml"
    config.write_text("[gateway]\nmax_partial_bytes = 40000000\nbody_timeout = 0\n")
    with (
        start_example_backend() as backend,
        start_gateway(backend=backend.address, config=config, admin=True, node_id="budget") as gw,
    ):
        socks = _send_partials(gw, 6)
        try:
            wait_for(lambda: sum(map(_closed, socks)), lambda n: n >= 4, "four closed", 30)
            partial = metric(gw.admin_url, "gateway_partial_bytes")
            assert partial is not None and partial <= 40_000_000
            with ExampleClient(gw.host, gw.port) as client:
                assert client.alert("after") == "ack:after"
            closed = sum(map(_closed, socks))
        finally:
            for sock in socks:
                sock.close()
        lines = [line for line in gw.process.stderr_lines if "over max_partial_bytes" in line]
        assert len(lines) == closed  # one line per connection closed


@pytest.mark.parametrize(
    "partial",
    [
        b"POST / HTTP/1.1\r\nContent-Type: application/x-thrift\r\nX-Pad: " + b"a" * 4000,
        b'[1,"alertSupervisor",1,0,{"1":{"str":"' + b"x" * 4000,
    ],
    ids=["http-head", "json-message"],
)
def test_bytes_held_by_a_dialect_layer_count_as_a_partial_message(
    partial: bytes, tmp_path: Path
) -> None:
    """An HTTP request head or a JSON message that never completes is held by its dialect
    layer, not the reader, and is still closed by body_timeout (one log line), others served."""
    config = tmp_path / "gateway.toml"
    config.write_text("[gateway]\nbody_timeout = 1\n")
    with (
        start_example_backend() as backend,
        start_gateway(backend=backend.address, config=config, admin=True, node_id="held") as gw,
    ):
        sock = socket.create_connection((gw.host, gw.port), timeout=10)
        try:
            sock.sendall(partial)
            wait_for(lambda: _closed(sock), bool, "the partial connection closed", 15)
            with ExampleClient(gw.host, gw.port) as client:
                assert client.alert("after") == "ack:after"
            assert metric(gw.admin_url, "gateway_partial_bytes") == 0
        finally:
            sock.close()
        lines = [line for line in gw.process.stderr_lines if "body_timeout" in line]
        assert len(lines) == 1
