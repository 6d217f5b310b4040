"""BodySkipper: finds where an unframed body ends, resumably, agreeing with the walker."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_thrift_properties import fields
from thrift_messages import Fields, message

from gateway.thrift import DEFAULT_LIMITS, MalformedMessage, ProtocolKind, read_header
from gateway.thrift.protocols import Truncated
from gateway.thrift.skipper import BodySkipper
from gateway.thrift.walk import NULL_SINK, walk_body

KINDS = [ProtocolKind.BINARY, ProtocolKind.COMPACT]


@settings(max_examples=150, deadline=None)
@given(body=fields(), kind=st.sampled_from(KINDS), cut=st.integers(1, 64))
def test_skipper_ends_where_the_body_ends_fed_in_any_chunks(
    body: Fields, kind: ProtocolKind, cut: int
) -> None:
    """For any valid message, the skipper resumed after each chunk ends exactly at its end."""
    data = message(kind, "m", body)
    start = read_header(data, kind).body_offset
    try:
        walk_body(data, read_header(data, kind), kind, NULL_SINK, DEFAULT_LIMITS)
    except MalformedMessage:
        return  # e.g. a generated map<double, ...> the canonical rules refuse: not this test
    skipper = BodySkipper(kind, start, DEFAULT_LIMITS)
    for stop in range(start + cut, len(data), cut):
        with pytest.raises(Truncated):
            skipper.skip(data[:stop])
    assert skipper.skip(data) == len(data)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), kind=st.sampled_from(KINDS))
def test_random_bytes_are_truncated_or_malformed_never_a_crash(
    data: bytes, kind: ProtocolKind
) -> None:
    """Arbitrary bytes end a body, need more, or are malformed: nothing else is raised."""
    try:
        end = BodySkipper(kind, 0, DEFAULT_LIMITS).skip(data)
    except (Truncated, MalformedMessage):
        return
    assert 0 < end <= len(data)
