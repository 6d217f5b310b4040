"""One client's bytes never hurt another's call, end to end (issue 16, defects 1-3): real
``gateway serve`` and example-backend processes, raw sockets and stock thrift clients."""

from __future__ import annotations

import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift_messages import decode, message

from clients.sync_client import ExampleClient
from gateway.processes import ExampleBackend, GatewayProcess, start_example_backend, start_gateway
from gateway.thrift import ProtocolKind, encode_frame, frame, parse_frame

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


def _header_frame(transforms: list[int], payload: bytes) -> bytes:
    """A THeader frame (seqid 5, binary) listing ``transforms``, carrying ``payload`` as is."""
    header = bytearray([0])  # protocol id: binary
    header += _varint(len(transforms))
    for transform in transforms:
        header += _varint(transform)
    header += bytes(-len(header) % 4)
    body = struct.pack(">HHiH", 0x0FFF, 0, 5, len(header) // 4) + header + payload
    return struct.pack(">i", len(body)) + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _answer_code(sock: socket.socket) -> int:
    """The TApplicationException type of the THeader-framed answer read from ``sock``."""
    data = _recv_frame(sock)
    assert data is not None, "no answer before the gateway closed"
    payload, _ = parse_frame(data)
    _, mtype, seqid, body = decode(BINARY, payload)
    assert seqid == 5
    assert mtype == TMessageType.EXCEPTION
    return int(next(value for fid, _, value in body if fid == 2)[1])


@pytest.mark.parametrize(
    "transforms",
    [[1] * 20_000, [1, 1], [1] * 5],
    ids=["zlib-x20000", "zlib-twice", "five"],
)
def test_theader_frame_listing_a_transform_repeatedly_is_refused_unread(
    tmp_path: Path, slow_backend: ExampleBackend, transforms: list[int]
) -> None:
    """A THeader frame listing zlib more than once (or more than 4 transforms) is answered
    INVALID_TRANSFORM in a THeader frame without being inflated, and another client's call
    underway is answered as usual."""
    call = message(BINARY, "alertSupervisor", [(1, TType.STRING, b"bomb")], seqid=5)
    payload = call
    for _ in range(min(len(transforms), 2)):
        payload = zlib.compress(payload)
    with start_gateway(config=_config(tmp_path, slow_backend, ""), node_id="bomb") as gw:
        victim = SlowVictim(gw)
        with socket.create_connection((gw.host, gw.port), timeout=10) as attacker:
            attacker.sendall(_header_frame(transforms, payload))
            assert _answer_code(attacker) == TApplicationException.INVALID_TRANSFORM
        assert victim.join() == "ack:victim"


def test_theader_frame_with_zlib_once_is_still_served(
    tmp_path: Path, slow_backend: ExampleBackend
) -> None:
    """A THeader call compressed once with zlib (what stock clients send) is answered."""
    call = message(BINARY, "alertSupervisor", [(1, TType.STRING, b"z")], seqid=5)
    with (
        start_gateway(config=_config(tmp_path, slow_backend, ""), node_id="zlib") as gw,
        socket.create_connection((gw.host, gw.port), timeout=10) as sock,
    ):
        sock.sendall(encode_frame(call, seqid=5, protocol=BINARY, transforms=[1]))
        data = _recv_frame(sock)
        assert data is not None
        payload, _ = parse_frame(data)
        _, mtype, seqid, body = decode(BINARY, payload)
        assert (mtype, seqid) == (TMessageType.REPLY, 5)
        assert body[0][2] == (TType.STRING, b"ack:z")


def test_bool_byte_two_is_refused_and_never_shares_the_key_of_true(
    tmp_path: Path, slow_backend: ExampleBackend
) -> None:
    """In cache mode a call whose bool argument is the byte 0x02 (true to Apache Python/C++,
    false to Java/Go) is refused with PROTOCOL_ERROR, so it can neither take nor poison the
    cached answer of the same call with a canonical true."""
    config = _config(
        tmp_path, slow_backend, '[methods.alertSupervisor]\nmode = "cache"\nttl = 60\n'
    )
    fields = [(1, TType.STRING, b"flag"), (2, TType.BOOL, True)]
    canonical = message(BINARY, "alertSupervisor", fields, seqid=3)
    assert canonical.endswith(b"\x02\x00\x02\x01\x00")  # field 2: bool true, then STOP
    poisoned = canonical[:-2] + b"\x02\x00"
    with (
        start_gateway(config=config, node_id="bool") as gw,
        socket.create_connection((gw.host, gw.port), timeout=10) as sock,
    ):
        sock.sendall(frame(poisoned))
        reply = _recv_frame(sock)
        assert reply is not None
        _, mtype, seqid, body = decode(BINARY, reply)
        assert (mtype, seqid) == (TMessageType.EXCEPTION, 3)
        assert b"bool byte 2" in _exception_text(body)
        sock.sendall(frame(canonical))
        reply = _recv_frame(sock)
        assert reply is not None
        _, mtype, seqid, body = decode(BINARY, reply)
        assert (mtype, seqid, body[0][2]) == (TMessageType.REPLY, 3, (TType.STRING, b"ack:flag"))
