"""TApplicationException messages, and what kind of answer a reply message carries."""

from __future__ import annotations

import struct

from thrift.Thrift import TApplicationException

from gateway.thrift.binscan import I32, STOP, STRING
from gateway.thrift.kinds import (
    DEFAULT_LIMITS,
    MalformedMessage,
    MessageType,
    ProtocolKind,
    ReplyKind,
)
from gateway.thrift.message import MessageHeader, encode_header, read_header
from gateway.thrift.protocols import InputBuffer, OutputBuffer, reader, writer
from gateway.thrift.walk import NULL_SINK, BodyErrors, check_type, walk_value

_MESSAGE_FIELD = 1  # TApplicationException.message: string
_TYPE_FIELD = 2  # TApplicationException.type: i32

# Enum members as globals on the per-message path (see gateway.thrift.message for why).
_REPLY = MessageType.REPLY
_EXCEPTION = MessageType.EXCEPTION
_COMPACT = ProtocolKind.COMPACT
_SUCCESS = ReplyKind.SUCCESS
_I16 = struct.Struct(">h")


def application_exception(
    protocol: ProtocolKind, name: str, seqid: int, code: int, message: str
) -> bytes:
    """A whole EXCEPTION message carrying ``TApplicationException(code, message)``."""
    out = OutputBuffer(bytearray(encode_header(protocol, name, MessageType.EXCEPTION, seqid)))
    TApplicationException(code, message).write(writer(protocol, out))
    return bytes(out.buf)


def parse_application_exception(message: bytes, protocol: ProtocolKind) -> tuple[int, str]:
    """``(code, message)`` of an EXCEPTION message; missing fields read as ``(0, "")``.

    The message text is decoded as UTF-8 with replacement characters, never failing.
    """
    header = read_header(message, protocol)
    if header.type is not MessageType.EXCEPTION:
        raise MalformedMessage(f"{header.type.name} message is not an EXCEPTION", header)
    code = TApplicationException.UNKNOWN
    text = ""
    inp = InputBuffer(message, header.body_offset)
    with BodyErrors(header):
        iprot = reader(protocol, inp, DEFAULT_LIMITS)
        iprot.readStructBegin()
        while True:
            _, ftype, fid = iprot.readFieldBegin()
            if ftype == STOP:
                break
            check_type(ftype)
            if fid == _MESSAGE_FIELD and ftype == STRING:
                text = bytes(iprot.readBinary()).decode("utf-8", "replace")
            elif fid == _TYPE_FIELD and ftype == I32:
                code = iprot.readI32()
            else:
                walk_value(iprot, NULL_SINK, ftype, DEFAULT_LIMITS, 1)
            iprot.readFieldEnd()
        iprot.readStructEnd()
    return code, text


def reply_kind(
    message: bytes, protocol: ProtocolKind, *, header: MessageHeader | None = None
) -> ReplyKind:
    """Whether a backend reply is a success, a declared exception or an application exception.

    REPLY: field 0 present, or no field at all (void) -> SUCCESS; otherwise a declared
    exception field -> DECLARED_EXCEPTION (field 0 wins if both appear, as in generated
    clients). EXCEPTION -> APPLICATION_EXCEPTION. Only reads as far as it needs to: a
    success is recognised at its first field header, so huge results cost nothing here.
    CALL/ONEWAY messages are :class:`MalformedMessage`.

    ``header``, if given, must be ``read_header(message, protocol)``: the proxy parsed the
    reply's header already and passes it so it is decoded once per reply.
    """
    if header is None:
        header = read_header(message, protocol)
    if header.type is _EXCEPTION:
        return ReplyKind.APPLICATION_EXCEPTION
    if header.type is not _REPLY:
        raise MalformedMessage(f"{header.type.name} message is not a reply", header)
    # Binary bodies start with the first field header (type:i8 id:i16) at a fixed place, so
    # the common answer (a success: field 0, or a void STOP) is read straight off the bytes,
    # exactly as the loop below would decide it, without building a protocol.
    start = header.body_offset
    if (
        protocol is not _COMPACT
        and start + 3 <= len(message)
        and (message[start] == STOP or _I16.unpack_from(message, start + 1)[0] == 0)
    ):
        return _SUCCESS
    declared = False
    with BodyErrors(header):
        iprot = reader(protocol, InputBuffer(message, header.body_offset), DEFAULT_LIMITS)
        iprot.readStructBegin()
        while True:
            _, ftype, fid = iprot.readFieldBegin()
            if ftype == STOP:
                break
            if fid == 0:
                return ReplyKind.SUCCESS
            check_type(ftype)
            declared = True
            walk_value(iprot, NULL_SINK, ftype, DEFAULT_LIMITS, 1)
            iprot.readFieldEnd()
    return ReplyKind.DECLARED_EXCEPTION if declared else ReplyKind.SUCCESS
