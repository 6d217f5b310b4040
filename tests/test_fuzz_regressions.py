"""Regression tests for bugs the fuzz targets found (docs/fuzz-notes.md lists them)."""

from __future__ import annotations

import pytest

from gateway.thrift import (
    DEFAULT_LIMITS,
    MalformedMessage,
    MessageType,
    ProtocolKind,
    canonical_args,
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
