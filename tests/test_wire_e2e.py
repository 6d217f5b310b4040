"""One client's bytes never hurt another's call, end to end (issue 16, defects 1-3): real
``gateway serve`` and example-backend processes, raw sockets and stock thrift clients."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from thrift.Thrift import TMessageType, TType
from thrift_messages import decode, message

from clients.sync_client import ExampleClient
from gateway.processes import ExampleBackend, GatewayProcess, start_example_backend, start_gateway
from gateway.thrift import ProtocolKind, frame

pytestmark = pytest.mark.integration

BINARY = ProtocolKind.BINARY
NONSTRICT = ProtocolKind.BINARY_NONSTRICT


def _config(tmp_path: Path, backend: ExampleBackend, text: str) -> Path:
    """A config with one upstream connection to ``backend``, then ``text``."""
    path = tmp_path / "gw.toml"
    path.write_text(f'[backends.default]\naddress = "{backend.address}"\nconnections = 1\n{text}')
    return path


def _recv_frame(sock: socket.socket) -> bytes | None:
    """One framed message from ``sock`` (without its length), None at EOF."""
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return data[4:]


def _bad_call(
    kind: ProtocolKind, name: str = "alertSupervisor", mtype: int = TMessageType.CALL
) -> bytes:
    """A call (seqid 7) whose body's only field has the invalid type id 0x55."""
    good = message(kind, name, [(1, TType.STRING, b"x")], mtype=mtype, seqid=7)
    body = b"\x0b\x00\x01\x00\x00\x00\x01x\x00"  # field 1, string "x", STOP
    assert good.endswith(body)
    return good[: -len(body)] + b"\x55" + body[1:]


def _exception_text(body: list[tuple[int, int, object]]) -> bytes:
    """The message (field 1) of a decoded TApplicationException body."""
    for fid, _, value in body:
        if fid == 1:
            assert isinstance(value, tuple)
            text = value[1]
            assert isinstance(text, bytes)
            return text
    raise AssertionError(f"no message in {body!r}")


class SlowVictim:
    """A stock-thrift client whose call (1 s at the backend) is underway in a thread."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.client = ExampleClient(gw.host, gw.port, timeout=15)
        self.result: str | BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self.client.alert("victim")
        except Exception as exc:  # recorded for the assertion
            self.result = exc

    def join(self) -> str | BaseException | None:
        self.thread.join(20)
        self.client.close()
        return self.result


@pytest.fixture
def slow_backend() -> Iterator[ExampleBackend]:
    with start_example_backend(delay=1.0) as backend:
        yield backend


def test_nonstrict_garbage_is_refused_and_the_victim_is_unharmed(
    tmp_path: Path, slow_backend: ExampleBackend
) -> None:
    """A non-strict binary passthrough call with an invalid type id in its body (backend:
    strict binary) is refused with PROTOCOL_ERROR, and another client's call underway on the
    same (only) upstream connection still gets its reply. (The other protocol pairs, a
    non-strict backend included, are covered in tests/test_wire_validation.py.)"""
    config = _config(tmp_path, slow_backend, '[methods.alertSupervisor]\nmode = "passthrough"\n')
    with start_gateway(config=config, node_id="validate") as gw:
        victim = SlowVictim(gw)
        with socket.create_connection((gw.host, gw.port), timeout=10) as attacker:
            attacker.sendall(frame(_bad_call(NONSTRICT)))
            reply = _recv_frame(attacker)
        assert reply is not None, "the attacker got no answer"
        _, mtype, seqid, body = decode(NONSTRICT, reply)
        assert (mtype, seqid) == (TMessageType.EXCEPTION, 7)
        assert b"malformed call: invalid type id 85" in _exception_text(body)
        assert victim.join() == "ack:victim"


def test_garbage_oneway_in_nonstrict_binary_never_reaches_the_backend(
    tmp_path: Path, slow_backend: ExampleBackend
) -> None:
    """A non-strict oneway call with an invalid body is dropped with one log line, and a
    strict caller's call underway on the same upstream connection still gets its reply."""
    config = _config(tmp_path, slow_backend, "")
    with start_gateway(config=config, node_id="oneway") as gw:
        victim = SlowVictim(gw)
        with socket.create_connection((gw.host, gw.port), timeout=10) as attacker:
            attacker.sendall(frame(_bad_call(NONSTRICT, "notify", TMessageType.ONEWAY)))
        assert victim.join() == "ack:victim"
        gw.process.wait_for_line(
            r"dropping oneway .*invalid type id 85", timeout=5, stream="stderr"
        )
