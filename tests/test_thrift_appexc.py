"""TApplicationException messages and reply_kind."""

from __future__ import annotations

import pytest
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift.transport.TTransport import TMemoryBuffer
from thrift_messages import ALL_PROTOCOLS, message, thrift_protocol

from gateway.contracts import ReplyKind
from gateway.errors import PROTOCOL_ERROR
from gateway.thrift import (
    MalformedMessage,
    MessageType,
    ProtocolKind,
    application_exception,
    parse_application_exception,
    read_header,
    reply_kind,
)

BINARY = ProtocolKind.BINARY


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_application_exception_reads_with_thrift(kind: ProtocolKind) -> None:
    """thrift's own readMessageBegin + TApplicationException.read decode what we build."""
    data = application_exception(kind, "Svc:alert", -7, PROTOCOL_ERROR, "bad request ✓")
    p = thrift_protocol(kind, TMemoryBuffer(data))
    assert p.readMessageBegin() == ("Svc:alert", TMessageType.EXCEPTION, -7)
    exc = TApplicationException()
    exc.read(p)
    assert (exc.type, exc.message) == (PROTOCOL_ERROR, "bad request ✓")


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_parse_application_exception_round_trip(kind: ProtocolKind) -> None:
    """parse_application_exception returns the code and message that were built in."""
    data = application_exception(kind, "m", 1, 6, "boom")
    assert parse_application_exception(data, kind) == (6, "boom")


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_parse_thrift_written_exception(kind: ProtocolKind) -> None:
    """An exception written by thrift's TApplicationException.write parses."""
    buf = TMemoryBuffer()
    p = thrift_protocol(kind, buf)
    p.writeMessageBegin("m", TMessageType.EXCEPTION, 3)
    TApplicationException(TApplicationException.UNKNOWN_METHOD, "no such method").write(p)
    p.writeMessageEnd()
    parsed = parse_application_exception(buf.getvalue(), kind)
    assert parsed == (TApplicationException.UNKNOWN_METHOD, "no such method")


def test_parse_skips_unknown_fields() -> None:
    """Unknown fields in the exception struct are skipped; missing ones default."""
    fields = [(3, TType.STRUCT, [(1, TType.I32, 1)]), (1, TType.STRING, b"only text")]
    data = message(BINARY, "m", fields, mtype=TMessageType.EXCEPTION)
    assert parse_application_exception(data, BINARY) == (0, "only text")


def test_parse_rejects_non_exception() -> None:
    """A REPLY message is not an application exception: MalformedMessage."""
    with pytest.raises(MalformedMessage):
        parse_application_exception(message(BINARY, "m", [], mtype=TMessageType.REPLY), BINARY)


def test_application_exception_header_type() -> None:
    """The built message is of type EXCEPTION with the given name and seqid."""
    header = read_header(application_exception(BINARY, "m", 12, 0, ""), BINARY)
    assert (header.name, header.type, header.seqid) == ("m", MessageType.EXCEPTION, 12)


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_reply_with_success_field(kind: ProtocolKind) -> None:
    """A REPLY whose result struct holds field 0 is SUCCESS."""
    data = message(kind, "m", [(0, TType.STRING, b"ok")], mtype=TMessageType.REPLY)
    assert reply_kind(data, kind) is ReplyKind.SUCCESS


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_void_reply_is_success(kind: ProtocolKind) -> None:
    """A REPLY with an empty result struct (void method) is SUCCESS."""
    assert reply_kind(message(kind, "m", [], mtype=TMessageType.REPLY), kind) is ReplyKind.SUCCESS


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_bool_success_in_compact_header(kind: ProtocolKind) -> None:
    """A boolean result (held in compact's field header) is SUCCESS."""
    data = message(kind, "m", [(0, TType.BOOL, False)], mtype=TMessageType.REPLY)
    assert reply_kind(data, kind) is ReplyKind.SUCCESS


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_declared_exception(kind: ProtocolKind) -> None:
    """A REPLY whose result struct holds a non-zero field is DECLARED_EXCEPTION."""
    fields = [(1, TType.STRUCT, [(1, TType.STRING, b"not found")])]
    data = message(kind, "m", fields, mtype=TMessageType.REPLY)
    assert reply_kind(data, kind) is ReplyKind.DECLARED_EXCEPTION


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_exception_message_is_application_exception(kind: ProtocolKind) -> None:
    """An EXCEPTION message is APPLICATION_EXCEPTION."""
    data = application_exception(kind, "m", 1, 6, "x")
    assert reply_kind(data, kind) is ReplyKind.APPLICATION_EXCEPTION


def test_call_is_not_a_reply() -> None:
    """reply_kind of a CALL message is MalformedMessage."""
    with pytest.raises(MalformedMessage):
        reply_kind(message(BINARY, "m", []), BINARY)


def test_truncated_reply_is_malformed() -> None:
    """A reply cut inside its first field header is MalformedMessage with header."""
    data = message(BINARY, "m", [(1, TType.STRUCT, [])], mtype=TMessageType.REPLY, seqid=8)
    with pytest.raises(MalformedMessage) as info:
        reply_kind(data[:-3], BINARY)
    assert info.value.header is not None and info.value.header.seqid == 8
