"""Non-canonical scalar encodings are malformed, so no two calls a decoder could tell apart
share a key (issue 16 "conservative keys"; docs/wire-notes.md)."""

from __future__ import annotations

import pytest
from thrift.Thrift import TType
from thrift_messages import message

from gateway.thrift import DEFAULT_LIMITS, MalformedMessage, ProtocolKind, read_header
from gateway.thrift.callkey import canonical_args
from gateway.thrift.walk import validate_body

COMPACT = ProtocolKind.COMPACT
HEAD = message(COMPACT, "m", [])[:-1]  # a compact call header; the body follows


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\x15\x80\x00\x00", "non-minimal varint"),  # i32 field: 0 as two bytes
        (b"\x15\xff\xff\xff\xff\x7f\x00", "outside i32"),  # zigzag beyond 32 bits
        (b"\x14\xff\xff\x07\x00", "outside i16"),
        (b"\x19\x11\x00\x00", "bool element 0"),  # list<bool> [0]
        (b"\x19\x11\x03\x00", "bool element 3"),
        (b"\x05\x80\x80\x04\x00\x00", "outside int16"),  # long-form field id 32768
        (b"\x18\x81\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00", "longer than 10 bytes"),
    ],
    ids=["overlong", "i32-range", "i16-range", "bool-0", "bool-3", "field-id", "11-bytes"],
)
def test_non_canonical_compact_encodings_are_malformed(body: bytes, error: str) -> None:
    """Compact bodies with overlong or out-of-range varints, field ids beyond int16 or bool
    elements other than 1/2 are refused by validation and by the call key alike."""
    data = HEAD + body
    header = read_header(data, COMPACT)
    with pytest.raises(MalformedMessage, match=error):
        validate_body(data, header, COMPACT, DEFAULT_LIMITS)
    with pytest.raises(MalformedMessage, match=error):
        canonical_args(data, COMPACT, header=header)


def test_canonical_compact_bools_in_lists_are_accepted() -> None:
    """The encodings every writer uses (list bools 1 and 2) key like binary's 1 and 0."""
    fields = [(1, (TType.LIST, TType.BOOL), [True, False])]
    compact = message(COMPACT, "m", fields)
    binary = message(ProtocolKind.BINARY, "m", fields)
    assert canonical_args(compact, COMPACT) == canonical_args(binary, ProtocolKind.BINARY)
