"""Thrift's own pure-Python protocol classes running over lean in-memory transports.

The protocols only ever call ``trans.readAll(n)`` / ``trans.write(b)``, so two tiny classes
replace ``TMemoryBuffer``: reading slices the caller's buffer in place (no up-front copy, and
the position is public, which message splitting needs), and writing appends to a bytearray.
"""

from __future__ import annotations

import struct
from typing import Any

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.TProtocol import TProtocolException
from thrift.transport.TTransport import TTransportException

from gateway.thrift.kinds import Limits, ProtocolKind

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


def reader(kind: ProtocolKind, inp: InputBuffer, limits: Limits) -> Any:
    """A thrift protocol decoding ``kind`` from ``inp`` with string/collection limits set.

    Only the body is read through it (headers are parsed by gateway.thrift.message), so the
    strictness of the binary header does not matter here.
    """
    if kind is _COMPACT:
        return TCompactProtocol(
            inp,
            string_length_limit=limits.max_string_size,
            container_length_limit=limits.max_collection_size,
        )
    return TBinaryProtocol(
        inp,
        string_length_limit=limits.max_string_size,
        container_length_limit=limits.max_collection_size,
    )


def writer(kind: ProtocolKind, out: OutputBuffer) -> Any:
    """A thrift protocol encoding ``kind`` into ``out`` (bodies only; headers are ours)."""
    if kind is _COMPACT:
        return TCompactProtocol(out)
    return TBinaryProtocol(out, strictWrite=kind is _BINARY)
