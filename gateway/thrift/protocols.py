"""Thrift's own pure-Python protocol classes running over lean in-memory transports.

The protocols only ever call ``trans.readAll(n)`` / ``trans.write(b)``, so two tiny classes
replace ``TMemoryBuffer``: reading slices the caller's buffer in place (no up-front copy, and
the position is public, which message splitting needs), and writing appends to a bytearray.
"""

from __future__ import annotations

import struct
from typing import Any

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import CONTAINER_READ as _CONTAINER_READ
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.TProtocol import TProtocolException
from thrift.transport.TTransport import TTransportException

from gateway.thrift.kinds import Limits, MalformedMessage, ProtocolKind

Buffer = bytes | bytearray

# Enum members as globals on the per-message path (see gateway.thrift.message for why).
_BINARY = ProtocolKind.BINARY
_COMPACT = ProtocolKind.COMPACT

# What thrift's protocol classes raise on bad input: limits and bad versions
# (TProtocolException / TTransportException), unknown compact type nibbles (KeyError),
# out-of-range integers when re-encoding (struct.error, TProtocolException) and bad UTF-8
# (ValueError). Truncation is reported separately, as Truncated.
DECODE_ERRORS: tuple[type[Exception], ...] = (
    TProtocolException,
    TTransportException,
    KeyError,
    struct.error,
    ValueError,
    OverflowError,
)


class Truncated(EOFError):
    """The buffer ended early; ``need`` is the buffer length that would satisfy the read."""

    def __init__(self, need: int) -> None:
        super().__init__(f"truncated: need {need} bytes")
        self.need = need


class InputBuffer:
    """A read-only thrift transport over ``buf[pos:]``; reads return ``bytes``."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: Buffer, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def readAll(self, size: int) -> Buffer:
        start = self.pos
        end = start + size
        if end > len(self.buf):
            raise Truncated(end)
        self.pos = end
        if type(self.buf) is bytes:
            return self.buf[start:end]
        # Values must be bytes (uuid.UUID insists); a bytearray slice is not.
        return bytes(self.buf[start:end])


class OutputBuffer:
    """A write-only thrift transport appending to ``buf``."""

    __slots__ = ("buf", "write")

    def __init__(self, buf: bytearray | None = None) -> None:
        self.buf = bytearray() if buf is None else buf
        self.write = self.buf.extend


class _CanonicalBinary(TBinaryProtocol):  # type: ignore[misc]
    """TBinaryProtocol that refuses a bool byte other than 0 and 1.

    Decoders disagree on the others: Apache Thrift Python and C++ and thriftpy2 read any
    non-zero byte as true, Java, Go and Haxe only 1. A call carrying one could share the key
    of a call the backend reads differently, so such bytes are malformed (``callkey``).
    """

    def readBool(self) -> bool:
        byte: int = self.readByte()
        if byte not in (0, 1):
            raise MalformedMessage(f"bool byte {byte & 0xFF} (only 0 and 1 are canonical)")
        return bool(byte == 1)


class _CanonicalCompact(TCompactProtocol):  # type: ignore[misc]
    """TCompactProtocol that refuses encodings decoders may read differently (``callkey``):
    non-minimal varints, varints beyond the width of their type, field ids outside int16,
    and bool elements other than 1 (true) and 2 (false) (Rust refuses 0, others read any
    non-1 byte as false)."""

    def _TCompactProtocol__readVarint(self) -> int:  # thrift calls it as self.__readVarint
        result = 0
        for shift in range(0, 70, 7):
            byte: int = self.trans.readAll(1)[0]
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and shift:
                    raise MalformedMessage("non-minimal varint")
                return result
        raise MalformedMessage("varint longer than 10 bytes")

    def readFieldBegin(self) -> tuple[None, int, int]:
        field: tuple[None, int, int] = super().readFieldBegin()
        if not -0x8000 <= field[2] <= 0x7FFF:
            raise MalformedMessage(f"field id {field[2]} outside int16")
        return field

    def readBool(self) -> bool:
        if self.state == _CONTAINER_READ:
            byte: int = self.trans.readAll(1)[0]
            if byte not in (1, 2):
                raise MalformedMessage(f"bool element {byte} (only 1 and 2 are canonical)")
            return bool(byte == 1)
        value: bool = super().readBool()
        return value

    # Integers read straight from the varint (one call, not thrift's three) with the width
    # check on the zigzag value: it fits the type exactly when it has no higher bits.
    def readI16(self) -> int:
        return _zigzag(self._TCompactProtocol__readVarint(), 16)

    def readI32(self) -> int:
        return _zigzag(self._TCompactProtocol__readVarint(), 32)

    def readI64(self) -> int:
        return _zigzag(self._TCompactProtocol__readVarint(), 64)


def _zigzag(value: int, bits: int) -> int:
    if value >> bits:
        raise MalformedMessage(f"varint {value} outside i{bits}")
    return (value >> 1) ^ -(value & 1)


def reader(kind: ProtocolKind, inp: InputBuffer, limits: Limits) -> Any:
    """A thrift protocol decoding ``kind`` from ``inp`` with string/collection limits set.

    Only the body is read through it (headers are parsed by gateway.thrift.message), so the
    strictness of the binary header does not matter here. It refuses non-canonical scalar
    encodings (:class:`_CanonicalBinary`, :class:`_CanonicalCompact`) with MalformedMessage.
    """
    if kind is _COMPACT:
        return _CanonicalCompact(
            inp,
            string_length_limit=limits.max_string_size,
            container_length_limit=limits.max_collection_size,
        )
    return _CanonicalBinary(
        inp,
        string_length_limit=limits.max_string_size,
        container_length_limit=limits.max_collection_size,
    )


def writer(kind: ProtocolKind, out: OutputBuffer) -> Any:
    """A thrift protocol encoding ``kind`` into ``out`` (bodies only; headers are ours)."""
    if kind is _COMPACT:
        return TCompactProtocol(out)
    return TBinaryProtocol(out, strictWrite=kind is _BINARY)
