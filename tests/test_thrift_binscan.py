"""The fast binary scanner agrees with the generic walker: same verdicts, same canonical form."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_thrift_properties import fields
from thrift.Thrift import TType
from thrift_messages import Fields, message

from gateway.thrift import DEFAULT_LIMITS, Limits, MalformedMessage, ProtocolKind, read_header
from gateway.thrift.callkey import CanonicalSink
from gateway.thrift.walk import NULL_SINK, scan_body, walk_body

BINARY = ProtocolKind.BINARY


def walker_canonical(data: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    sink = CanonicalSink()
    walk_body(data, read_header(data, BINARY), BINARY, sink, limits)
    return bytes(sink.out)


def verdicts(data: bytes, limits: Limits) -> tuple[str | None, str | None]:
    """(scanner error, walker error): None where the body is accepted."""
    header = read_header(data, BINARY)
    results: list[str | None] = []
    for check in (
        lambda: scan_body(data, header, limits),
        lambda: walk_body(data, header, BINARY, NULL_SINK, limits),
    ):
        try:
            check()
            results.append(None)
        except MalformedMessage as exc:
            assert exc.header == header  # both can still answer the caller's seqid
            results.append("malformed")
    return results[0], results[1]


@settings(max_examples=300, deadline=None)
@given(args=fields())
def test_canonical_verdict_means_the_body_is_the_canonical_form(args: Fields) -> None:
    """Whenever the scanner calls a body canonical, the walker's canonical form is that body."""
    data = message(BINARY, "m", args)
    header = read_header(data, BINARY)
    if scan_body(data, header, Limits()):
        assert walker_canonical(data) == data[header.body_offset :]


@settings(max_examples=300, deadline=None)
@given(args=fields(), data=st.data())
def test_scanner_and_walker_accept_and_refuse_the_same_bodies(
    args: Fields, data: st.DataObject
) -> None:
    """Truncated, corrupted or over-limit bodies are refused by both or by neither."""
    encoded = bytearray(message(BINARY, "m", args))
    body_at = read_header(bytes(encoded), BINARY).body_offset
    action = data.draw(st.sampled_from(["truncate", "flip", "append", "limits"]))
    limits = Limits()
    if action == "truncate" and len(encoded) > body_at:
        del encoded[data.draw(st.integers(body_at, len(encoded) - 1)) :]
    elif action == "flip" and len(encoded) > body_at:
        at = data.draw(st.integers(body_at, len(encoded) - 1))
        encoded[at] = data.draw(st.integers(0, 255))
    elif action == "append":
        encoded += b"\x00"
    else:
        limits = Limits(max_depth=2, max_collection_size=2, max_string_size=8)
    scanner, walker = verdicts(bytes(encoded), limits)
    assert scanner == walker


@pytest.mark.parametrize(
    ("fields_", "canonical"),
    [
        ([(1, TType.STRING, b"a"), (2, TType.I32, 5)], True),
        ([(2, TType.I32, 5), (1, TType.STRING, b"a")], False),  # fields out of order
        ([(1, (TType.SET, TType.I32), [1, 2])], True),
        ([(1, (TType.SET, TType.I32), [2, 1])], False),  # set elements out of order
        ([(1, (TType.MAP, TType.STRING, TType.I32), [(b"a", 2), (b"b", 1)])], True),
        ([(1, (TType.MAP, TType.STRING, TType.I32), [(b"b", 1), (b"a", 2)])], False),
        ([(1, (TType.MAP, TType.STRING, TType.I32), [])], False),  # empty map with types
        ([(1, TType.BOOL, True)], True),
    ],
)
def test_canonical_verdicts(fields_: Fields, canonical: bool) -> None:
    """Out-of-order fields, set elements and map keys, and typed empty maps need the walk."""
    data = message(BINARY, "m", fields_)
    assert scan_body(data, read_header(data, BINARY), Limits()) is canonical


def test_bool_other_than_zero_or_one_is_malformed() -> None:
    """A bool byte of 2 is true to Apache Python/C++ but false to Java/Go: malformed, for the
    scanner and the walker alike (issue 16 defect 2)."""
    data = bytearray(message(BINARY, "m", [(1, TType.BOOL, True)]))
    data[-2] = 2
    with pytest.raises(MalformedMessage, match="bool byte 2"):
        scan_body(bytes(data), read_header(bytes(data), BINARY), Limits())
    with pytest.raises(MalformedMessage, match="bool byte 2"):
        walker_canonical(bytes(data))
