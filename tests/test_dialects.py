"""Unit tests of the wrapped client dialects: detection by first bytes, the layers, and the
TJSONProtocol conversion (gateway.proxy.dialects, gateway.proxy.http, gateway.thrift.jsonproto).

Reference bytes come from the stock Apache Thrift Python library (TJSONProtocol,
TZlibTransport, TFramedTransport, THeaderTransport), never from the code under test.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.protocol.TJSONProtocol import TJSONProtocol
from thrift.Thrift import TMessageType, TType
from thrift.transport.THeaderTransport import THeaderClientType
from thrift.transport.TTransport import TFramedTransport, TMemoryBuffer
from thrift.transport.TZlibTransport import TZlibTransport

from gateway.proxy.dialects import Framed, Json, Zlib, detect_stack, unwrap, wrap
from gateway.proxy.http import Http, HttpError
from gateway.thrift import (
    DEFAULT_LIMITS,
    Limits,
    MalformedMessage,
    NotThrift,
    ProtocolKind,
    TransportKind,
    call_identity,
)
from gateway.thrift.jsonproto import JsonSplitter, binary_to_json, json_to_binary


def _write_call(protocol: Any, name: str = "echo", seqid: int = 7, text: str = 'héllo ["]') -> None:
    protocol.writeMessageBegin(name, TMessageType.CALL, seqid)
    protocol.writeStructBegin("args")
    protocol.writeFieldBegin("arg", TType.STRING, 1)
    protocol.writeString(text)
    protocol.writeFieldEnd()
    protocol.writeFieldBegin("opts", TType.MAP, 2)
    protocol.writeMapBegin(TType.STRING, TType.I64, 2)
    for key, value in (("b", -(2**63)), ("a", 5)):
        protocol.writeString(key)
        protocol.writeI64(value)
    protocol.writeMapEnd()
    protocol.writeFieldEnd()
    protocol.writeFieldBegin("flags", TType.LIST, 3)
    protocol.writeListBegin(TType.BOOL, 2)
    protocol.writeBool(True)
    protocol.writeBool(False)
    protocol.writeListEnd()
    protocol.writeFieldEnd()
    protocol.writeFieldBegin("delay", TType.DOUBLE, 4)
    protocol.writeDouble(0.25)
    protocol.writeFieldEnd()
    protocol.writeFieldStop()
    protocol.writeStructEnd()
    protocol.writeMessageEnd()


def encoded(make: Callable[[Any], Any], **kwargs: Any) -> bytes:
    """One call written by the stock protocol ``make`` over a memory buffer."""
    buf = TMemoryBuffer()
    _write_call(make(buf), **kwargs)
    return buf.getvalue()


def through(make_transport: Callable[[Any], Any], make_protocol: Callable[[Any], Any]) -> bytes:
    """The bytes a stock client stack puts on the socket for one call."""
    sink = TMemoryBuffer()
    protocol = make_protocol(make_transport(sink))
    _write_call(protocol)
    protocol.trans.flush()  # THeaderProtocol's own transport flushes into the one below
    return sink.getvalue()


def test_json_call_converts_to_the_binary_call() -> None:
    """A stock TJSONProtocol call becomes exactly the stock binary encoding of the same call."""
    assert json_to_binary(encoded(TJSONProtocol)) == encoded(TBinaryProtocol)


def test_binary_reply_converts_to_stock_json() -> None:
    """A binary message becomes exactly what the stock TJSONProtocol writes for it."""
    assert binary_to_json(encoded(TBinaryProtocol)) == encoded(TJSONProtocol)


def test_json_and_binary_calls_have_one_identity() -> None:
    """A JSON caller and a binary caller of the same call get the same call key."""
    binary = encoded(TBinaryProtocol)
    keys = {
        call_identity(m, ProtocolKind.BINARY, backend="b", upstream_name="echo").key
        for m in (binary, json_to_binary(encoded(TJSONProtocol)))
    }
    assert len(keys) == 1


def test_reply_strings_that_are_not_utf8_go_out_as_base64() -> None:
    """A reply string that is not UTF-8 can only be binary: it is written base64, as the
    stock writeBinary does, and reads back as the same bytes."""
    buf = TMemoryBuffer()
    proto = TBinaryProtocol(buf)
    proto.writeMessageBegin("blob", TMessageType.REPLY, 1)
    proto.writeStructBegin("r")
    proto.writeFieldBegin("success", TType.STRING, 0)
    proto.writeBinary(bytes(range(256)))
    proto.writeFieldEnd()
    proto.writeFieldStop()
    proto.writeStructEnd()
    reader = TJSONProtocol(TMemoryBuffer(binary_to_json(buf.getvalue())))
    reader.readMessageBegin()
    reader.readStructBegin()
    reader.readFieldBegin()
    assert reader.readBinary() == bytes(range(256))


@pytest.mark.parametrize(
    "bad",
    [
        b'[2,"echo",1,1,{}]',  # version 2
        b'[1,"echo",1,1,{"1":{"zzz":1}}]',  # unknown type tag
        b'[1,"echo",1,1,{"1":{"lst":["i32",5,1]}}]',  # fewer elements than announced
        b'[1,"echo",1,1,{"1":{"i32":"x"}}]',
        b'[1,"echo",1,1,{}]junk',
    ],
)
def test_bad_json_is_malformed(bad: bytes) -> None:
    """Bad TJSONProtocol messages are a MalformedMessage, never another exception."""
    with pytest.raises(MalformedMessage):
        json_to_binary(bad)


def test_json_collection_sizes_are_limited() -> None:
    """A JSON list announcing more elements than max_collection_size is refused."""
    limits = Limits(max_collection_size=3)
    with pytest.raises(MalformedMessage) as info:
        json_to_binary(b'[1,"echo",1,1,{"1":{"lst":["i32",4,1,2,3,4]}}]', limits)
    assert info.value.header is not None and info.value.header.seqid == 1


def test_json_splitter_finds_messages_in_any_chunking() -> None:
    """Messages back to back, strings holding brackets, quotes and escapes, cut into 1- to
    7-byte chunks: every message comes out whole, in order."""
    messages = [encoded(TJSONProtocol, seqid=i, text='a]["\\\\' * i) for i in range(1, 5)]
    stream = b"".join(messages)
    for size in range(1, 8):
        splitter = JsonSplitter()
        out: list[bytes] = []
        for i in range(0, len(stream), size):
            out += splitter.feed(stream[i : i + size])
        assert out == messages and splitter.buffered == 0


def test_json_splitter_bounds() -> None:
    """A JSON message over max_frame_size, or nested too deep, is refused before it ends."""
    with pytest.raises(MalformedMessage):
        JsonSplitter(Limits(max_frame_size=100)).feed(b'[1,"x",1,1,{"1":{"str":"' + b"a" * 200)
    with pytest.raises(MalformedMessage):
        JsonSplitter(Limits(max_depth=2)).feed(b"[" * 20)
    with pytest.raises(MalformedMessage):
        JsonSplitter().feed(b"{}")


def _inner(stack: Any) -> tuple[list[str], TransportKind, ProtocolKind]:
    assert stack is not None
    layers, transport, protocol, _ = stack
    return [layer.name for layer in layers], transport, protocol


STACKS: dict[str, tuple[bytes, list[str], TransportKind, ProtocolKind]] = {
    "header in framed": (
        through(TFramedTransport, lambda t: THeaderProtocol(t, [THeaderClientType.HEADERS])),
        ["framed"],
        TransportKind.HEADER,
        ProtocolKind.BINARY,
    ),
    "json buffered": (
        encoded(TJSONProtocol),
        ["json"],
        TransportKind.BUFFERED,
        ProtocolKind.BINARY,
    ),
    "json framed": (
        through(TFramedTransport, TJSONProtocol),
        ["framed", "json"],
        TransportKind.BUFFERED,
        ProtocolKind.BINARY,
    ),
    "zlib buffered compact": (
        through(TZlibTransport, TCompactProtocol),
        ["zlib"],
        TransportKind.BUFFERED,
        ProtocolKind.COMPACT,
    ),
    "zlib over framed": (
        through(lambda s: TZlibTransport(TFramedTransport(s)), TBinaryProtocol),
        ["framed", "zlib"],
        TransportKind.BUFFERED,
        ProtocolKind.BINARY,
    ),
    "zlib json": (
        through(TZlibTransport, TJSONProtocol),
        ["zlib", "json"],
        TransportKind.BUFFERED,
        ProtocolKind.BINARY,
    ),
}


@pytest.mark.parametrize("name", STACKS)
def test_detect_stack_recognises_stock_stacks(name: str) -> None:
    """The bytes a stock client stack sends are detected as the right layers and inner
    stream, and unwrap to the call (JSON: its binary form)."""
    data, layers, transport, protocol = STACKS[name]
    stack = detect_stack(data, DEFAULT_LIMITS)
    assert _inner(stack) == (layers, transport, protocol)
    assert stack is not None
    inner = stack[3]
    if transport is TransportKind.BUFFERED:
        expected = encoded(
            TCompactProtocol if protocol is ProtocolKind.COMPACT else TBinaryProtocol
        )
        assert inner == expected


@pytest.mark.parametrize("name", STACKS)
def test_detect_stack_waits_for_enough_bytes(name: str) -> None:
    """Every prefix of those streams is undecided (None) or already the right answer."""
    data, layers, transport, protocol = STACKS[name]
    for end in range(len(data)):
        stack = detect_stack(data[:end], DEFAULT_LIMITS)
        assert stack is None or _inner(stack) == (layers, transport, protocol)


def test_plain_streams_have_no_layers() -> None:
    """Framed binary and buffered compact are detected as before, with no layer."""
    assert _inner(detect_stack(through(TFramedTransport, TBinaryProtocol), DEFAULT_LIMITS)) == (
        [],
        TransportKind.FRAMED,
        ProtocolKind.BINARY,
    )
    assert _inner(detect_stack(encoded(TCompactProtocol), DEFAULT_LIMITS)) == (
        [],
        TransportKind.BUFFERED,
        ProtocolKind.COMPACT,
    )


@pytest.mark.parametrize(
    "garbage",
    [
        b"SSH-2.0-OpenSSH\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"x\x00garbage",
        b"*1\r\n$4\r\n",
    ],
)
def test_other_protocols_are_not_thrift(garbage: bytes) -> None:
    """SSH, TLS, a bad zlib header and Redis are refused at once."""
    with pytest.raises(NotThrift):
        detect_stack(garbage, DEFAULT_LIMITS)


def test_framed_layer_unwraps_across_chunks_and_frames_replies() -> None:
    """The framed layer passes frame contents through whatever the chunking, and frames
    each reply; a negative frame length is refused."""
    layer = Framed(DEFAULT_LIMITS)
    stream = b"\x00\x00\x00\x03abc\x00\x00\x00\x02de"
    assert b"".join(layer.unwrap(stream[i : i + 1]) for i in range(len(stream))) == b"abcde"
    assert layer.wrap(b"xy") == b"\x00\x00\x00\x02xy"
    with pytest.raises(MalformedMessage):
        Framed(DEFAULT_LIMITS).unwrap(b"\xff\x00\x00\x20")


def test_zlib_layer_round_trip_and_bomb() -> None:
    """Replies are a zlib stream the stock TZlibTransport reads; a read inflating past
    max_frame_size is refused."""
    layer = Zlib(DEFAULT_LIMITS)
    replies = layer.wrap(b"one") + layer.wrap(b"two")
    client = TZlibTransport(TMemoryBuffer(replies))
    assert client.readAll(6) == b"onetwo"
    bomb = zlib.compress(b"\x00" * 10_000)
    with pytest.raises(MalformedMessage):
        Zlib(Limits(max_frame_size=1000)).unwrap(bomb)


def test_json_layer_chain_with_framing() -> None:
    """Framed JSON: calls come out binary; a binary reply goes back framed JSON."""
    layers = [Framed(DEFAULT_LIMITS), Json(DEFAULT_LIMITS)]
    assert unwrap(layers, through(TFramedTransport, TJSONProtocol)) == encoded(TBinaryProtocol)
    out = wrap(layers, encoded(TBinaryProtocol))
    assert out[4:] == encoded(TJSONProtocol) and int.from_bytes(out[:4], "big") == len(out) - 4


def _request(body: bytes, head: str = "POST / HTTP/1.1\r\nHost: x\r\n") -> bytes:
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_http_layer_serves_requests_one_at_a_time() -> None:
    """Two pipelined requests: the first body is handed on, the second waits until the first
    is answered; each response carries that request's replies."""
    http = Http(DEFAULT_LIMITS)
    stream = _request(b"first") + _request(b"second")
    assert http.unwrap(stream[:30]) == b""
    assert http.unwrap(stream[30:]) == b"first"
    assert http.awaiting_response
    assert http.wrap(b"reply-1") == b""
    response = http.respond()
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(b"\r\n\r\nreply-1")
    assert b"Content-Length: 7\r\n" in response and b"Connection: keep-alive" in response
    assert http.has_next()
    assert http.unwrap(b"") == b"second"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 405),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"POST / HTTP/1.1\r\n\r\n", 411),
        (b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", 413),
        (b"POST /\r\n\r\n", 400),
    ],
)
def test_http_refusals(request_bytes: bytes, status: int) -> None:
    """Requests the gateway does not serve are refused with the right status."""
    with pytest.raises(HttpError) as info:
        Http(DEFAULT_LIMITS).unwrap(request_bytes)
    assert info.value.status == status


def test_http_head_size_is_bounded() -> None:
    """A request head that never ends is refused once over max_header_size."""
    http = Http(Limits(max_header_size=100))
    with pytest.raises(HttpError):
        http.unwrap(b"POST / HTTP/1.1\r\n" + b"X: y\r\n" * 50)


def test_http_1_0_closes_after_the_response() -> None:
    """An HTTP/1.0 request without keep-alive gets "Connection: close" and the layer closes."""
    http = Http(DEFAULT_LIMITS)
    http.unwrap(_request(b"x", "POST / HTTP/1.0\r\n"))
    assert b"Connection: close" in http.respond() and http.closing


def test_http_oneway_answers_follow_the_client() -> None:
    """A request whose calls were all oneway gets an empty 200, except from Apache's C++
    THttpClient, which reads no response to it."""
    for agent, answered in (
        ("Python/THttpClient", True),
        ("Thrift/0.17.0 (C++/THttpClient)", False),
    ):
        http = Http(DEFAULT_LIMITS)
        http.unwrap(_request(b"x", f"POST / HTTP/1.1\r\nUser-Agent: {agent}\r\n"))
        assert bool(http.respond()) is answered


def test_a_reply_json_cannot_carry_becomes_an_internal_error() -> None:
    """A binary reply the JSON writer cannot convert (here: a truncated body) reaches the
    JSON caller as a TApplicationException INTERNAL_ERROR with its seqid, not as nothing."""
    from thrift.Thrift import TApplicationException

    broken = encoded(TBinaryProtocol, seqid=31)[:-3]
    reader = TJSONProtocol(TMemoryBuffer(Json(DEFAULT_LIMITS).wrap(broken)))
    name, mtype, seqid = reader.readMessageBegin()
    exc = TApplicationException()
    exc.read(reader)
    assert (name, mtype, seqid) == ("echo", TMessageType.EXCEPTION, 31)
    assert exc.type == TApplicationException.INTERNAL_ERROR
