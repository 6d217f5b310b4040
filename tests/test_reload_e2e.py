"""SIGHUP against a running `gateway serve`: real processes, a client connection held open."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift_messages import decode, message

from gateway.processes import (
    ExampleBackend,
    GatewayProcess,
    backend_count,
    call_once,
    healthz,
    metric,
    start_example_backend,
    start_gateway,
)
from gateway.thrift import ProtocolKind, frame

pytestmark = pytest.mark.integration

BINARY = ProtocolKind.BINARY


class RawClient:
    """One framed strict-binary connection (messages made by the thrift library): a call can
    be sent and its reply read later, so a test can act while the call is in flight."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.sock = socket.create_connection((gw.host, gw.port), timeout=10)

    def send(self, method: str, text: str, seqid: int) -> None:
        call = message(BINARY, method, [(1, TType.STRING, text.encode())], seqid=seqid)
        self.sock.sendall(frame(call))

    def read(self) -> tuple[int, str]:
        """(seqid, result string) of the next reply; fails on an exception reply."""
        (size,) = struct.unpack(">I", self._exactly(4))
        _, mtype, seqid, body = decode(BINARY, self._exactly(size))
        assert mtype == TMessageType.REPLY, body
        text: bytes = body[0][2][1]  # field 0, the result: (type, value)
        return seqid, text.decode()

    def call(self, method: str, text: str, seqid: int) -> str:
        self.send(method, text, seqid)
        got, result = self.read()
        assert got == seqid
        return result

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "the gateway closed the client connection"
            data += chunk
        return data

    def __enter__(self) -> RawClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[ExampleBackend, ExampleBackend]]:
    """A slow supervisor backend (1 s a call) and a fast poetry backend."""
    with (
        start_example_backend(delay=1.0) as supervisor,
        start_example_backend("poetry") as poetry,
    ):
        yield supervisor, poetry


def wait_until(condition: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not callable(condition) or not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def hup(gw: GatewayProcess, expect: str, quiet: float = 0.0) -> list[str]:
    """SIGHUP the node by PID and wait for its ``expect`` line; the stderr lines logged
    since, after ``quiet`` more seconds (to show no more are coming)."""
    seen = len(gw.process.stderr_lines)
    os.kill(gw.pid, signal.SIGHUP)
    gw.process.wait_for_line(expect, stream="stderr")
    time.sleep(quiet)
    return gw.process.stderr_lines[seen:]


def test_sighup_applies_new_policies_and_backends_without_dropping_calls_or_clients(
    services: tuple[ExampleBackend, ExampleBackend], tmp_path: Path
) -> None:
    """A rewritten config (alertSupervisor cached, getPoem routed to a new backend, the
    default backend's pools changed) applies on SIGHUP while a call is in flight: that call
    is answered, its client connection keeps working, and new calls follow the new config."""
    supervisor, poetry = services
    path = tmp_path / "gw.toml"
    path.write_text(f'[backends.default]\naddress = "{supervisor.address}"\n')
    with start_gateway(config=path, node_id="hup", admin=True) as gw:
        with pytest.raises(TApplicationException) as before:  # not routed to poetry yet
            call_once(gw, lambda c: c.get_poem("early"))
        assert before.value.type == TApplicationException.UNKNOWN_METHOD
        with RawClient(gw) as client:
            arrived = backend_count(supervisor)
            client.send("alertSupervisor", "in-flight", seqid=1)
            wait_until(lambda: backend_count(supervisor) > arrived, "the call reached the backend")
            reloaded = (
                f'[backends.default]\naddress = "{supervisor.address}"\nconnections = 2\n\n'
                f'[backends.poetry]\naddress = "{poetry.address}"\n\n'
                '[methods.alertSupervisor]\nmode = "cache"\nttl = 60\n\n'
                '[methods.getPoem]\nbackend = "poetry"\n'
            )
            path.write_text(reloaded)
            hup(gw, "gateway: reloaded")
            # Applied while the call was still underway (the backend takes 1 s).
            assert (healthz(gw.admin_url) or {}).get("in_flight") == 1
            assert client.read() == (1, "ack:in-flight")
            counted = backend_count(supervisor)
            assert client.call("alertSupervisor", "cached", seqid=2) == "ack:cached"
            assert client.call("alertSupervisor", "cached", seqid=3) == "ack:cached"
            assert backend_count(supervisor) - counted == 1  # the second came from the cache
            assert client.call("getPoem", "reloaded", seqid=4).startswith("reloaded\n")
        # The replaced default backend's old pool closed once its call was answered.
        gw.process.wait_for_line(r"backend default: closed 1 retired pool", stream="stderr")
        assert metric(gw.admin_url, "gateway_config_reloads_total", result="ok") == 1
        config = (healthz(gw.admin_url) or {}).get("config") or {}
        assert config["sha256"] == hashlib.sha256(reloaded.encode()).hexdigest()
    reload_lines = [line for line in gw.process.stderr_lines if "gateway.reload:" in line]
    assert [line.split("gateway.reload: ", 1)[1] for line in reload_lines] == [
        f"gateway: reloaded {path}: 2 backend(s), 2 method policies; "
        "backends added poetry; changed default"
    ]


def test_sighup_with_a_bad_file_keeps_the_running_config(
    services: tuple[ExampleBackend, ExampleBackend], tmp_path: Path
) -> None:
    """A config that does not validate: one log line, the running config kept (the cache
    still answers), the node still serving, the error counted, /healthz says so."""
    supervisor, _ = services
    path = tmp_path / "gw.toml"
    good = (
        f'[backends.default]\naddress = "{supervisor.address}"\n\n'
        '[methods.alertSupervisor]\nmode = "cache"\nttl = 60\n'
    )
    path.write_text(good)
    with start_gateway(config=path, node_id="bad-hup", admin=True) as gw:
        counted = backend_count(supervisor)
        assert call_once(gw, lambda c: c.alert("kept")) == "ack:kept"
        path.write_text(good.replace("ttl = 60\n", ""))
        lines = hup(gw, "reload failed", quiet=0.3)
        assert len(lines) == 1 and lines[0].endswith(
            "gateway: reload failed, keeping the running config: "
            "methods.alertSupervisor: mode = 'cache' needs ttl > 0"
        )
        assert call_once(gw, lambda c: c.alert("kept")) == "ack:kept"
        assert backend_count(supervisor) - counted == 1  # still cached: the old policy holds
        assert metric(gw.admin_url, "gateway_config_reloads_total", result="error") == 1
        assert metric(gw.admin_url, "gateway_config_reloads_total", result="ok") == 0
        config = (healthz(gw.admin_url) or {}).get("config") or {}
        assert config["last_reload_ok"] is False
        assert config["sha256"] == hashlib.sha256(good.encode()).hexdigest()
        code = gw.stop()
    assert code == 0
