"""transcode: re-encoding messages between protocols, checked with the thrift library."""

from __future__ import annotations

import itertools

import pytest
from thrift.Thrift import TMessageType, TType
from thrift_messages import ALL_PROTOCOLS, RICH_ARGS, decode, message

from gateway.thrift import (
    Limits,
    MalformedMessage,
    ProtocolKind,
    read_header,
    transcode,
)

BINARY = ProtocolKind.BINARY
NONSTRICT = ProtocolKind.BINARY_NONSTRICT
COMPACT = ProtocolKind.COMPACT
PAIRS = list(itertools.product(ALL_PROTOCOLS, repeat=2))


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_transcoded_message_decodes_equal(src: ProtocolKind, dst: ProtocolKind) -> None:
    """The thrift library decodes the transcoded message to the same header and values."""
    data = message(src, "Svc:method", RICH_ARGS, mtype=TMessageType.REPLY, seqid=-3)
    assert decode(dst, transcode(data, src, dst)) == decode(src, data)


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_transcoding_matches_direct_encoding(kind: ProtocolKind) -> None:
    """Transcoding to a protocol gives the bytes the thrift library writes for it directly."""
    for src in ALL_PROTOCOLS:
        data = message(src, "method", RICH_ARGS, seqid=9)
        assert transcode(data, src, kind) == message(kind, "method", RICH_ARGS, seqid=9)


def test_round_trip_through_every_protocol() -> None:
    """binary -> compact -> non-strict -> binary reproduces the original bytes."""
    data = message(BINARY, "method", RICH_ARGS)
    there = transcode(transcode(data, BINARY, COMPACT), COMPACT, NONSTRICT)
    assert transcode(there, NONSTRICT, BINARY) == data


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_name_and_seqid_override(src: ProtocolKind, dst: ProtocolKind) -> None:
    """name= and seqid= replace the header's name and seqid."""
    data = message(src, "old", RICH_ARGS, seqid=1)
    header = read_header(transcode(data, src, dst, name="new", seqid=2**31 - 1), dst)
    assert (header.name, header.seqid) == ("new", 2**31 - 1)


def test_same_protocol_copies_body_verbatim() -> None:
    """src == dst only re-encodes the header: even an invalid body passes unchanged."""
    data = message(COMPACT, "m", []) + b"\xee"
    assert transcode(data, COMPACT, COMPACT, seqid=5)[-2:] == b"\x00\xee"


def test_strict_to_nonstrict_copies_body_verbatim() -> None:
    """Strict and non-strict binary share the body encoding, so the body is copied as is."""
    data = message(BINARY, "m", RICH_ARGS)
    out = transcode(data, BINARY, NONSTRICT)
    assert (
        out[read_header(out, NONSTRICT).body_offset :]
        == data[read_header(data, BINARY).body_offset :]
    )


def test_empty_map_from_compact_gets_stop_types() -> None:
    """Compact carries no types for an empty map; binary output writes STOP (0) for both."""
    args = [(1, (TType.MAP, TType.STRING, TType.I32), [])]
    out = transcode(message(COMPACT, "m", args), COMPACT, BINARY)
    assert decode(BINARY, out)[3] == [(1, TType.MAP, ("map", TType.STOP, TType.STOP, []))]


def test_bad_body_is_malformed_with_header() -> None:
    """A body the walker rejects is MalformedMessage with the header set."""
    data = message(BINARY, "m", [], seqid=4)[:-1] + b"\x05\x00\x01\x00"
    with pytest.raises(MalformedMessage) as info:
        transcode(data, BINARY, COMPACT)
    assert info.value.header is not None and info.value.header.seqid == 4


def test_limits_apply() -> None:
    """transcode enforces the given limits."""
    data = message(BINARY, "m", [(1, (TType.LIST, TType.I32), [1, 2, 3])])
    with pytest.raises(MalformedMessage):
        transcode(data, BINARY, COMPACT, limits=Limits(max_collection_size=2))


def test_out_of_range_field_id_is_malformed() -> None:
    """A compact field id beyond i16 (by delta overflow) cannot be re-encoded: MalformedMessage."""
    data = message(COMPACT, "m", [(32767, TType.BYTE, 1)])
    bad = data[:-1] + b"\x13\x01\x00"  # another byte field, id 32767 + 1
    with pytest.raises(MalformedMessage):
        transcode(bad, COMPACT, BINARY)


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_multiplexed_call_transcodes(src: ProtocolKind, dst: ProtocolKind) -> None:
    """A TMultiplexedProtocol call keeps its "Service:method" name and values across protocols."""
    data = message(src, "alert", RICH_ARGS, service="Supervisor")
    decoded = decode(dst, transcode(data, src, dst))
    assert decoded == decode(src, data)
    assert decoded[0] == "Supervisor:alert"
