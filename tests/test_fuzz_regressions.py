"""Regression tests for bugs the fuzz targets found (docs/fuzz-notes.md lists them)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.Thrift import TApplicationException
from thrift.transport.TTransport import TMemoryBuffer

from clients.sync_client import ExampleClient
from gateway.processes import start_example_backend, start_gateway
from gateway.thrift import (
    DEFAULT_LIMITS,
    MalformedMessage,
    MessageType,
    ProtocolKind,
    canonical_args,
    frame,
    read_header,
    transcode,
    validate_body,
)
from gateway.thrift.message import encode_header

COMPACT = ProtocolKind.COMPACT

# Compact bodies whose integers do not fit their type: thrift's Python reader returns an
# unbounded int, C++ truncates it, so no two decoders agree on the value.
OUT_OF_RANGE = {
    # i32 field 1 (0x15) whose zigzag varint is 2**35 - 1: far past 32 bits.
    "i32": b"\x15\xff\xff\xff\xff\x7f\x00",
    # i16 field 1 (0x14) of zigzag 70000.
    "i16": b"\x14\xe0\xc5\x08\x00",
    # i64 field 1 (0x16) of an 11-byte varint (beyond 64 bits).
    "i64": b"\x16" + b"\xff" * 10 + b"\x01\x00",
    # i32 field 32767 (long form, zigzag 65534) then one with delta 1: field id 32768.
    "field id": b"\x05\xfe\xff\x03\x02\x15\x02\x00",
    # a list of one i32 out of range.
    "list element": b"\x19\x15\xff\xff\xff\xff\x7f\x00",
}


def _call(body: bytes) -> bytes:
    return encode_header(COMPACT, "m", MessageType.CALL, 1) + body


@pytest.mark.parametrize("what", sorted(OUT_OF_RANGE))
def test_compact_out_of_range_integer_is_refused_before_forwarding(what: str) -> None:
    """A compact call with an integer out of its type's range is refused by the validation
    that guards byte-for-byte forwarding, as the call key and transcoding refuse it."""
    message = _call(OUT_OF_RANGE[what])
    header = read_header(message, COMPACT)
    with pytest.raises(MalformedMessage):
        transcode(message, COMPACT, ProtocolKind.BINARY)
    with pytest.raises(MalformedMessage):
        canonical_args(message, COMPACT)
    with pytest.raises(MalformedMessage) as refused:
        validate_body(message, header, COMPACT, DEFAULT_LIMITS)
    assert refused.value.header == header


def test_compact_integers_at_their_limits_are_accepted() -> None:
    """Compact integers at the very ends of their ranges (and field id 32767) still pass."""
    # i16 -32768 (zigzag 65535), i32 2**31 - 1 (zigzag 2**32 - 2), field 32767 (an i32 0).
    body = b"\x14\xff\xff\x03" + b"\x15\xfe\xff\xff\xff\x0f" + b"\x05\xfe\xff\x03\x00" + b"\x00"
    message = _call(body)
    validate_body(message, read_header(message, COMPACT), COMPACT, DEFAULT_LIMITS)
    assert transcode(message, COMPACT, ProtocolKind.BINARY)


@pytest.mark.integration
def test_gateway_refuses_an_out_of_range_compact_call_instead_of_forwarding_it(
    tmp_path: Path,
) -> None:
    """A passthrough compact call whose i32 varint exceeds 32 bits is answered PROTOCOL_ERROR
    and never reaches the compact backend."""
    config = tmp_path / "gw.toml"
    config.write_text(
        '[backends.default]\nprotocol = "compact"\n'
        '[methods.alertSupervisor]\nmode = "passthrough"\n'
    )
    # alertSupervisor(message="x") plus an unknown i32 field 2 far out of range.
    body = b"\x18\x01x" + b"\x15\xff\xff\xff\xff\x7f" + b"\x00"
    call = encode_header(COMPACT, "alertSupervisor", MessageType.CALL, 9) + body
    with (
        start_example_backend(protocol="compact") as backend,
        start_gateway(backend=backend.address, config=config, node_id="range") as gw,
        socket.create_connection((gw.host, gw.port), timeout=10) as sock,
    ):
        sock.sendall(frame(call))
        reply = _read_frame(sock)
        with ExampleClient(backend.host, backend.port, protocol="compact") as client:
            forwarded = client.backend_stats("supervisor").get("alertSupervisor", 0)
    header = read_header(reply, COMPACT)
    assert (header.type, header.seqid) == (MessageType.EXCEPTION, 9)
    exc = TApplicationException()
    exc.read(TCompactProtocol(TMemoryBuffer(reply[header.body_offset :])))
    assert exc.type == TApplicationException.PROTOCOL_ERROR
    assert forwarded == 0


def _read_frame(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        chunk = sock.recv(65536)
        assert chunk, "the gateway closed the connection"
        data += chunk
    return data[4 : 4 + int.from_bytes(data[:4], "big")]
