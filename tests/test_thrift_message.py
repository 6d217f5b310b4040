"""Message headers: read_header, replace_header, multiplexed names, Limits."""

from __future__ import annotations

import pytest
from thrift.Thrift import TMessageType, TType
from thrift_messages import ALL_PROTOCOLS, RICH_ARGS, decode, message

from gateway.thrift import (
    Limits,
    MalformedMessage,
    MessageType,
    ProtocolKind,
    read_header,
    replace_header,
)

ARGS = [(1, TType.STRING, b"hello")]


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_read_header_decodes_thrift_library_header(kind: ProtocolKind) -> None:
    """read_header returns the name, type and seqid the thrift library wrote."""
    data = message(kind, "alertSupervisor", ARGS, mtype=TMessageType.ONEWAY, seqid=42)
    header = read_header(data, kind)
    assert (header.name, header.type, header.seqid) == ("alertSupervisor", MessageType.ONEWAY, 42)


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_body_offset_points_at_args_struct(kind: ProtocolKind) -> None:
    """body_offset is where the header ends: an empty args struct is one STOP byte after it."""
    data = message(kind, "ping", [])
    assert read_header(data, kind).body_offset == len(data) - 1


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_negative_seqid_round_trips(kind: ProtocolKind) -> None:
    """Negative seqids (compact writes them as unsigned varints) read back unchanged."""
    data = message(kind, "ping", [], seqid=-5)
    assert read_header(data, kind).seqid == -5


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_multiplexed_name_splits_into_service_and_method(kind: ProtocolKind) -> None:
    """A TMultiplexedProtocol name "Svc:method" gives service "Svc" and method "method"."""
    header = read_header(message(kind, "alert", ARGS, service="Supervisor"), kind)
    assert (header.name, header.service, header.method) == (
        "Supervisor:alert",
        "Supervisor",
        "alert",
    )


def test_plain_name_has_no_service() -> None:
    """A name without a separator has service None and is itself the method."""
    header = read_header(message(ProtocolKind.BINARY, "alert", ARGS), ProtocolKind.BINARY)
    assert (header.service, header.method) == (None, "alert")


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_truncated_header_is_malformed_without_header(kind: ProtocolKind) -> None:
    """A message cut inside its header is MalformedMessage with header None."""
    data = message(kind, "alertSupervisor", ARGS)
    with pytest.raises(MalformedMessage) as info:
        read_header(data[:6], kind)
    assert info.value.header is None


def test_wrong_protocol_is_malformed() -> None:
    """A compact message read as strict binary is MalformedMessage."""
    with pytest.raises(MalformedMessage):
        read_header(message(ProtocolKind.COMPACT, "m", ARGS), ProtocolKind.BINARY)


def test_strict_header_is_malformed_as_nonstrict() -> None:
    """A strict binary header is refused where the old non-strict header is expected."""
    with pytest.raises(MalformedMessage):
        read_header(message(ProtocolKind.BINARY, "m", ARGS), ProtocolKind.BINARY_NONSTRICT)


def test_unknown_message_type_is_malformed() -> None:
    """A strict binary header with message type 9 is MalformedMessage."""
    data = bytearray(message(ProtocolKind.BINARY, "m", ARGS))
    data[3] = 9
    with pytest.raises(MalformedMessage):
        read_header(bytes(data), ProtocolKind.BINARY)


def test_non_utf8_name_is_malformed() -> None:
    """A message name that is not UTF-8 is MalformedMessage."""
    data = message(ProtocolKind.BINARY, "m", ARGS).replace(b"m", b"\xff", 1)
    with pytest.raises(MalformedMessage):
        read_header(data, ProtocolKind.BINARY)


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_replace_header_keeps_body_verbatim(kind: ProtocolKind) -> None:
    """replace_header changes name, seqid and type while the body bytes stay identical."""
    data = message(kind, "short", RICH_ARGS, seqid=3)
    new = replace_header(data, kind, name="Svc:aMuchLongerName", seqid=-99, type=MessageType.ONEWAY)
    old_header, new_header = read_header(data, kind), read_header(new, kind)
    assert new[new_header.body_offset :] == data[old_header.body_offset :]
    assert decode(kind, new)[:3] == ("Svc:aMuchLongerName", TMessageType.ONEWAY, -99)


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_replace_header_without_overrides_is_identity(kind: ProtocolKind) -> None:
    """replace_header with no overrides reproduces the thrift library's bytes exactly."""
    data = message(kind, "alertSupervisor", ARGS, seqid=2**31 - 1)
    assert replace_header(data, kind) == data


@pytest.mark.parametrize("kind", [ProtocolKind.BINARY, ProtocolKind.BINARY_NONSTRICT])
@pytest.mark.parametrize("seqid", [0, 7, -1, 2**31 - 1, -(2**31)])
def test_replace_header_seqid_only_matches_thrift_library(kind: ProtocolKind, seqid: int) -> None:
    """The seqid-only fast path gives the bytes the thrift library writes for that seqid."""
    data = message(kind, "alertSupervisor", RICH_ARGS, seqid=3)
    expected = message(kind, "alertSupervisor", RICH_ARGS, seqid=seqid)
    assert replace_header(data, kind, seqid=seqid) == expected


def test_replace_header_strict_binary_with_byte_2_set_is_re_encoded() -> None:
    """A strict-binary version word with byte 2 set (ignored by readers) takes the slow path:
    the result is the message thrift writes, byte 2 cleared, body unchanged."""
    kind = ProtocolKind.BINARY
    data = bytearray(message(kind, "alertSupervisor", RICH_ARGS, seqid=3))
    assert data[2] == 0
    data[2] = 0x01
    new = replace_header(bytes(data), kind, seqid=9)
    assert new == message(kind, "alertSupervisor", RICH_ARGS, seqid=9)
    assert decode(kind, new)[:3] == ("alertSupervisor", TMessageType.CALL, 9)


def test_replace_header_rejects_out_of_range_seqid() -> None:
    """A seqid outside the signed 32-bit range is a ValueError."""
    data = message(ProtocolKind.COMPACT, "m", ARGS)
    with pytest.raises(ValueError):
        replace_header(data, ProtocolKind.COMPACT, seqid=2**31)


def test_limits_string_size_defaults_to_frame_size() -> None:
    """max_string_size left at 0 follows max_frame_size."""
    assert Limits(max_frame_size=1000).max_string_size == 1000


def test_limits_reject_non_positive_values() -> None:
    """A zero or negative limit is a ValueError."""
    with pytest.raises(ValueError):
        Limits(max_collection_size=0)
