"""Message headers: parsing (name, type, seqid, where the body starts) and re-encoding.

Headers are parsed by hand rather than with ``readMessageBegin`` because the callers need
exact byte offsets (the body is copied verbatim by :func:`replace_header`) and, for
unframed streams, how many more bytes a truncated header needs.
"""

from __future__ import annotations

import struct

from gateway.thrift.kinds import MalformedMessage, MessageType, ProtocolKind
from gateway.thrift.kinds import MessageHeader as MessageHeader  # re-exported: defined there
from gateway.thrift.protocols import Buffer, Truncated

_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_VERSION_MASK = 0xFFFF0000
_VERSION_1 = 0x80010000
COMPACT_PROTOCOL_ID = 0x82
_COMPACT_VERSION = 1
_COMPACT_VERSION_MASK = 0x1F
_COMPACT_TYPE_SHIFT = 5

# Enum members as module globals for the per-message code below: on Python 3.11 every
# `SomeEnum.MEMBER` lookup goes through a descriptor (~0.1 µs), a global costs ~10x less.
_BINARY = ProtocolKind.BINARY
_BINARY_NONSTRICT = ProtocolKind.BINARY_NONSTRICT
_COMPACT = ProtocolKind.COMPACT


def _varint32(buf: Buffer, pos: int) -> tuple[int, int]:
    """An unsigned varint of at most 5 bytes (a 32-bit value) at ``pos``; returns (value, end)."""
    result = 0
    shift = 0
    for _ in range(5):
        if pos >= len(buf):
            raise Truncated(pos + 1)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if result > 0xFFFFFFFF:
                break
            return result, pos
        shift += 7
    raise MalformedMessage("bad varint in compact message header")


def _name(buf: Buffer, pos: int, size: int, max_name: int, tail: int) -> str:
    if size < 0:
        raise MalformedMessage("negative message name length")
    if size > max_name:
        raise MalformedMessage(f"message name length {size} exceeds limit {max_name}")
    end = pos + size
    if end + tail > len(buf):
        raise Truncated(end + tail)
    try:
        return buf[pos:end].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage("message name is not UTF-8") from None


# A dict lookup instead of MessageType(value): the enum call costs more than the rest of a
# binary header parse, and every message (calls and replies) has its header parsed.
_MESSAGE_TYPES: dict[int, MessageType] = {t.value: t for t in MessageType}


def _message_type(value: int) -> MessageType:
    mtype = _MESSAGE_TYPES.get(value)
    if mtype is None:
        raise MalformedMessage(f"unknown message type {value}")
    return mtype


def parse_header(buf: Buffer, pos: int, protocol: ProtocolKind, max_name: int) -> MessageHeader:
    """Parse the header of the message starting at ``buf[pos]``.

    ``body_offset`` in the result is relative to ``pos``. Raises :class:`Truncated` (with an
    absolute ``need``) when ``buf`` ends inside the header, :class:`MalformedMessage` (with no
    header) when the bytes cannot be a header of ``protocol``.
    """
    if protocol is _COMPACT:
        if pos + 2 > len(buf):
            raise Truncated(pos + 2)
        if buf[pos] != COMPACT_PROTOCOL_ID:
            raise MalformedMessage(f"bad compact protocol id 0x{buf[pos]:02x}")
        version_type = buf[pos + 1]
        if version_type & _COMPACT_VERSION_MASK != _COMPACT_VERSION:
            raise MalformedMessage("bad compact protocol version")
        mtype = _message_type(version_type >> _COMPACT_TYPE_SHIFT)
        seqid, p = _varint32(buf, pos + 2)
        if seqid > 0x7FFFFFFF:  # written as the unsigned 32-bit pattern of a signed int
            seqid -= 1 << 32
        size, p = _varint32(buf, p)
        name = _name(buf, p, size, max_name, 0)
        return MessageHeader(name, mtype, seqid, p + size - pos)
    if pos + 4 > len(buf):
        raise Truncated(pos + 4)
    (word,) = _U32.unpack_from(buf, pos)
    if protocol is _BINARY:
        if word & _VERSION_MASK != _VERSION_1:
            raise MalformedMessage("no strict binary version word")
        mtype = _message_type(word & 0xFF)  # byte 2 is ignored, as thrift's readers do
        if pos + 8 > len(buf):
            raise Truncated(pos + 8)
        (size,) = _I32.unpack_from(buf, pos + 4)
        name = _name(buf, pos + 8, size, max_name, 4)
        p = pos + 8 + size
        (seqid,) = _I32.unpack_from(buf, p)
        return MessageHeader(name, mtype, seqid, p + 4 - pos)
    (size,) = _I32.unpack_from(buf, pos)
    if size < 0:
        raise MalformedMessage("strict binary header where the old non-strict one was expected")
    name = _name(buf, pos + 4, size, max_name, 5)
    p = pos + 4 + size
    mtype = _message_type(buf[p])
    (seqid,) = _I32.unpack_from(buf, p + 1)
    return MessageHeader(name, mtype, seqid, p + 5 - pos)


def read_header(message: bytes, protocol: ProtocolKind) -> MessageHeader:
    """The header of one whole message; :class:`MalformedMessage` if it cannot be decoded."""
    try:
        return parse_header(message, 0, protocol, len(message))
    except Truncated:
        raise MalformedMessage("message ends inside its header") from None


def encode_varint(value: int) -> bytes:
    """``value`` (unsigned) as a ULEB128 varint, as compact protocol and THeader write it."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _check_seqid(seqid: int) -> None:
    if not -0x80000000 <= seqid <= 0x7FFFFFFF:
        raise ValueError(f"seqid {seqid} is not a signed 32-bit integer")


def encode_header(protocol: ProtocolKind, name: str, type: MessageType, seqid: int) -> bytes:
    """A message header in ``protocol``; ValueError if ``seqid`` is not a signed 32-bit int."""
    _check_seqid(seqid)
    raw = name.encode("utf-8")
    if protocol is _COMPACT:
        return b"".join(
            (
                bytes((COMPACT_PROTOCOL_ID, _COMPACT_VERSION | (type << _COMPACT_TYPE_SHIFT))),
                encode_varint(seqid & 0xFFFFFFFF),
                encode_varint(len(raw)),
                raw,
            )
        )
    if protocol is _BINARY:
        return b"".join((_U32.pack(_VERSION_1 | type), _I32.pack(len(raw)), raw, _I32.pack(seqid)))
    return b"".join((_I32.pack(len(raw)), raw, bytes((type,)), _I32.pack(seqid)))


def reheader(
    message: bytes,
    src: ProtocolKind,
    dst: ProtocolKind,
    *,
    name: str | None = None,
    seqid: int | None = None,
    type: MessageType | None = None,
    header: MessageHeader | None = None,
) -> bytes:
    """Re-encode the header of a ``src`` message as ``dst``; body bytes copied verbatim.

    Only valid when both protocols encode bodies alike (same protocol, or the two binaries).
    ``header``, if given, must be ``read_header(message, src)``: callers that parsed it
    already pass it so the per-call path decodes each header once (it is not re-checked).
    """
    if header is None:
        header = read_header(message, src)
    if (
        src is dst
        and src is not _COMPACT
        and (name is None or name == header.name)
        and (type is None or type == header.type)
        # Byte 2 of the strict version word is ignored when read and written as 0: a message
        # with it set takes the re-encoding path below, so the output never differs.
        and (src is _BINARY_NONSTRICT or message[2] == 0)
    ):
        # Both binary headers end with the seqid as a fixed-width i32 right before the body,
        # so when only the seqid changes (the upstream pool's rewrite of every call) the new
        # message is the old one with those 4 bytes replaced: no name re-encoding.
        if seqid is None or seqid == header.seqid:
            return bytes(message)
        _check_seqid(seqid)
        view = memoryview(message)
        at = header.body_offset - 4
        return b"".join((view[:at], _I32.pack(seqid), view[at + 4 :]))
    new = encode_header(
        dst,
        header.name if name is None else name,
        header.type if type is None else type,
        header.seqid if seqid is None else seqid,
    )
    return b"".join((new, memoryview(message)[header.body_offset :]))


def replace_header(
    message: bytes,
    protocol: ProtocolKind,
    *,
    name: str | None = None,
    seqid: int | None = None,
    type: MessageType | None = None,
    header: MessageHeader | None = None,
) -> bytes:
    """The message with only its header re-encoded (overrides applied), body copied verbatim.

    ``header``, if given, must be ``read_header(message, protocol)`` (see :func:`reheader`).
    """
    return reheader(message, protocol, protocol, name=name, seqid=seqid, type=type, header=header)
