"""MessageReader: splitting framed and buffered streams into whole messages, with limits."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thrift.Thrift import TType
from thrift_messages import ALL_PROTOCOLS, RICH_ARGS, message, nest

from gateway.thrift import (
    FrameTooLarge,
    Limits,
    MalformedMessage,
    MessageReader,
    ProtocolKind,
    SkippedFrame,
    TransportKind,
    encode,
    frame,
    read_header,
)
from gateway.thrift import framing as framing_module

# THeader carries only binary/compact and needs its own frames: tests/test_thrift_theader.py.
COMBOS = [(t, p) for t in (TransportKind.FRAMED, TransportKind.BUFFERED) for p in ALL_PROTOCOLS]
BUFFERED = TransportKind.BUFFERED
FRAMED = TransportKind.FRAMED
BINARY = ProtocolKind.BINARY
COMPACT = ProtocolKind.COMPACT


def _messages(protocol: ProtocolKind) -> list[bytes]:
    return [
        message(protocol, "first", RICH_ARGS, seqid=1),
        message(protocol, "second", [], seqid=2),
        message(protocol, "Svc:third", [(1, TType.STRING, b"x" * 5000)], seqid=3),
    ]


@pytest.mark.parametrize(("transport", "protocol"), COMBOS)
def test_byte_by_byte(transport: TransportKind, protocol: ProtocolKind) -> None:
    """Fed one byte at a time, the reader returns each message exactly once, in order."""
    messages = _messages(protocol)
    stream = b"".join(encode(transport, m) for m in messages)
    reader = MessageReader(transport, protocol)
    out: list[bytes] = []
    for i in range(len(stream)):
        out += reader.feed(stream[i : i + 1])
    assert out == messages
    assert reader.buffered == 0


@pytest.mark.parametrize(("transport", "protocol"), COMBOS)
def test_all_at_once(transport: TransportKind, protocol: ProtocolKind) -> None:
    """Several messages in one feed all come back from that feed."""
    messages = _messages(protocol)
    reader = MessageReader(transport, protocol)
    assert reader.feed(b"".join(encode(transport, m) for m in messages)) == messages


@pytest.mark.parametrize(("transport", "protocol"), COMBOS)
def test_chunks_straddling_messages(transport: TransportKind, protocol: ProtocolKind) -> None:
    """Chunks that end mid-message carry the remainder over to the next feed."""
    messages = _messages(protocol) * 3
    stream = b"".join(encode(transport, m) for m in messages)
    reader = MessageReader(transport, protocol)
    out: list[bytes] = []
    for i in range(0, len(stream), 1000):
        out += reader.feed(stream[i : i + 1000])
    assert out == messages


def test_single_buffered_message_is_returned_without_copy() -> None:
    """A feed holding exactly one unframed message returns the very same bytes object."""
    data = message(BINARY, "m", RICH_ARGS)
    assert MessageReader(BUFFERED, BINARY).feed(data)[0] is data


def test_incomplete_message_waits() -> None:
    """A truncated message yields nothing and keeps its bytes buffered."""
    data = message(COMPACT, "m", RICH_ARGS)
    reader = MessageReader(BUFFERED, COMPACT)
    assert reader.feed(data[:-1]) == []
    assert reader.buffered == len(data) - 1


def test_framed_oversize_rejected_before_buffering() -> None:
    """A frame length above max_frame_size raises FrameTooLarge from its 4 length bytes."""
    reader = MessageReader(FRAMED, BINARY, Limits(max_frame_size=100))
    with pytest.raises(FrameTooLarge):
        reader.feed(struct.pack(">i", 101))


def test_framed_negative_length_is_malformed() -> None:
    """A negative frame length is MalformedMessage without a header."""
    with pytest.raises(MalformedMessage) as info:
        MessageReader(FRAMED, BINARY).feed(struct.pack(">i", -1))
    assert info.value.header is None


def test_framed_garbage_header_is_malformed() -> None:
    """A whole frame that does not start with a header of the protocol is MalformedMessage."""
    with pytest.raises(MalformedMessage):
        MessageReader(FRAMED, COMPACT).feed(frame(b"\x00\x01\x02\x03\x04\x05"))


def test_framed_body_is_not_validated() -> None:
    """A frame with a good header and a garbage body is returned (validated lazily)."""
    data = message(BINARY, "m", []) + b"\xee\xee"
    assert MessageReader(FRAMED, BINARY).feed(frame(data)) == [data]


def test_buffered_oversize_is_frame_too_large() -> None:
    """An unframed message growing past max_frame_size raises FrameTooLarge."""
    data = message(BINARY, "m", [(1, (TType.LIST, TType.I32), list(range(100)))])
    reader = MessageReader(BUFFERED, BINARY, Limits(max_frame_size=200))
    with pytest.raises(FrameTooLarge):
        for i in range(0, len(data), 50):
            reader.feed(data[i : i + 50])


def test_buffered_announced_oversize_fails_early() -> None:
    """A string announcing more bytes than max_frame_size fails before they arrive."""
    data = message(BINARY, "m", [(1, TType.STRING, b"x" * 1000)])
    reader = MessageReader(BUFFERED, BINARY, Limits(max_frame_size=500, max_string_size=5000))
    with pytest.raises(FrameTooLarge):
        reader.feed(data[:40])


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_bad_type_id_is_malformed_with_header(protocol: ProtocolKind) -> None:
    """An unknown field type id is MalformedMessage that still carries the header."""
    good = message(protocol, "m", [], seqid=77)
    # Type 5 is unassigned in TType; compact type nibble 0x0e is unassigned too.
    bad = good[:-1] + (b"\x05\x00\x01\x00" if protocol is not COMPACT else b"\x1e\x00")
    with pytest.raises(MalformedMessage) as info:
        MessageReader(BUFFERED, protocol).feed(bad)
    assert info.value.header is not None
    assert info.value.header.seqid == 77


def test_bad_list_element_type_is_malformed() -> None:
    """A list whose element type id is STOP is MalformedMessage."""
    good = message(BINARY, "m", [])
    bad = good[:-1] + b"\x0f\x00\x01" + b"\x00" + struct.pack(">i", 1) + b"\x00\x00"
    with pytest.raises(MalformedMessage):
        MessageReader(BUFFERED, BINARY).feed(bad)


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_depth_limit(protocol: ProtocolKind) -> None:
    """Nesting deeper than max_depth is MalformedMessage; exactly max_depth is fine."""
    limits = Limits(max_depth=8)
    assert MessageReader(BUFFERED, protocol, limits).feed(message(protocol, "m", nest(8)))
    with pytest.raises(MalformedMessage):
        MessageReader(BUFFERED, protocol, limits).feed(message(protocol, "m", nest(9)))


def test_depth_limit_counts_containers() -> None:
    """Lists count towards the nesting depth like structs do."""
    args = [(1, (TType.LIST, (TType.LIST, (TType.LIST, TType.I32))), [[[1]]])]
    with pytest.raises(MalformedMessage):
        MessageReader(BUFFERED, BINARY, Limits(max_depth=3)).feed(message(BINARY, "m", args))


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_collection_limit(protocol: ProtocolKind) -> None:
    """A list longer than max_collection_size is MalformedMessage."""
    args = [(1, (TType.LIST, TType.BYTE), [1] * 11)]
    limits = Limits(max_collection_size=10)
    with pytest.raises(MalformedMessage):
        MessageReader(BUFFERED, protocol, limits).feed(message(protocol, "m", args))


def test_collection_limit_applies_to_maps() -> None:
    """A map with more entries than max_collection_size is MalformedMessage."""
    args = [(1, (TType.MAP, TType.BYTE, TType.BYTE), [(i, i) for i in range(11)])]
    limits = Limits(max_collection_size=10)
    with pytest.raises(MalformedMessage):
        MessageReader(BUFFERED, COMPACT, limits).feed(message(COMPACT, "m", args))


def test_string_limit() -> None:
    """A string longer than max_string_size is MalformedMessage."""
    data = message(BINARY, "m", [(1, TType.STRING, b"x" * 11)])
    with pytest.raises(MalformedMessage):
        MessageReader(BUFFERED, BINARY, Limits(max_string_size=10)).feed(data)


def test_negative_list_size_is_malformed() -> None:
    """A binary list with a negative size is MalformedMessage, not a wait for more bytes."""
    good = message(BINARY, "m", [])
    bad = good[:-1] + b"\x0f\x00\x01" + b"\x08" + struct.pack(">i", -1) + b"\x00"
    with pytest.raises(MalformedMessage):
        MessageReader(BUFFERED, BINARY).feed(bad)


def test_negative_string_size_is_malformed() -> None:
    """A binary string with a negative length is MalformedMessage."""
    good = message(BINARY, "m", [])
    bad = good[:-1] + b"\x0b\x00\x01" + struct.pack(">i", -5) + b"\x00"
    with pytest.raises(MalformedMessage):
        MessageReader(BUFFERED, BINARY).feed(bad)


def test_unknown_compact_element_type_is_malformed() -> None:
    """A compact list whose element type nibble is undefined is MalformedMessage."""
    good = message(COMPACT, "m", [])
    bad = good[:-1] + b"\x19" + b"\x1e" + b"\x00"  # field 1 list, size 1, type 0x0e
    with pytest.raises(MalformedMessage):
        MessageReader(BUFFERED, COMPACT).feed(bad)


def test_errors_are_final() -> None:
    """After an error every later feed raises the same error."""
    reader = MessageReader(FRAMED, BINARY, Limits(max_frame_size=10))
    with pytest.raises(FrameTooLarge) as first:
        reader.feed(struct.pack(">i", 11))
    with pytest.raises(FrameTooLarge) as second:
        reader.feed(frame(message(BINARY, "m", [])))
    assert second.value is first.value


def test_error_carries_messages_completed_before_it() -> None:
    """Whole messages ahead of bad bytes in the same feed are on the error's complete list."""
    good = message(BINARY, "m", [])
    with pytest.raises(MalformedMessage) as info:
        MessageReader(BUFFERED, BINARY).feed(good + good + b"\x00\x00\x00\x00")
    assert info.value.complete == [good, good]


@pytest.mark.parametrize(
    "fields",
    [
        [(1, TType.STRING, b"x" * 100_000)],
        [(1, (TType.LIST, TType.I64), list(range(10_000)))],
        # The case a re-walk from the start made quadratic: nothing bounds the bytes still
        # needed better than one per remaining element.
        [(1, (TType.LIST, TType.STRUCT), [[(1, TType.I32, i)] for i in range(10_000)])],
    ],
    ids=["string", "list-i64", "list-of-structs"],
)
@pytest.mark.parametrize("protocol", [BINARY, COMPACT])
def test_unframed_message_in_small_chunks_is_skipped_once(
    monkeypatch: pytest.MonkeyPatch, fields: Any, protocol: ProtocolKind
) -> None:
    """An unframed message arriving in small chunks is skipped by one resumable skipper that
    examines each byte once (O(size) in all), not re-walked from its start per chunk."""
    examined: list[int] = []
    real = framing_module.BodySkipper

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            examined.append(0)

        def skip(self, buf: Any) -> int:
            start = self.pos
            try:
                return int(super().skip(buf))
            finally:
                examined[-1] += self.pos - start

    monkeypatch.setattr(framing_module, "BodySkipper", Counting)
    data = message(protocol, "m", fields)
    reader = MessageReader(BUFFERED, protocol)
    out = []
    for i in range(0, len(data), 1000):
        out += reader.feed(data[i : i + 1000])
    assert out == [data]
    body = len(data) - read_header(data, protocol).body_offset
    assert examined == [body]  # one skipper, each body byte consumed once


# -- oversized frames skipped instead of fatal (issue 8, item 7b) -----------------------------


def _big(seqid: int, size: int, protocol: ProtocolKind = BINARY) -> bytes:
    """A whole message of about ``size`` bytes (one string argument), unframed."""
    return message(protocol, "Svc:big", [(1, TType.STRING, b"x" * size)], seqid=seqid)


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_oversized_frame_is_skipped_and_reported_with_its_header(protocol: ProtocolKind) -> None:
    """With skip_oversized, a frame over max_frame_size is reported (header, size) and the
    messages around it in the same feed still come back."""
    small_1, small_2 = message(protocol, "a", [], seqid=1), message(protocol, "b", [], seqid=3)
    big = _big(2, 500, protocol)
    reader = MessageReader(FRAMED, protocol, Limits(max_frame_size=100), skip_oversized=True)
    assert reader.feed(frame(small_1) + frame(big) + frame(small_2)) == [small_1, small_2]
    assert reader.take_skipped() == [SkippedFrame(read_header(big, protocol), len(big))]
    assert reader.take_skipped() == []


def test_oversized_frame_streams_through_without_being_buffered() -> None:
    """Fed in small chunks, a skipped frame never occupies the buffer beyond its header."""
    big, after = _big(7, 5000), message(BINARY, "after", [], seqid=8)
    stream = frame(big) + frame(after)
    reader = MessageReader(FRAMED, BINARY, Limits(max_frame_size=100), skip_oversized=True)
    out: list[bytes] = []
    for i in range(0, len(stream), 64):
        out += reader.feed(stream[i : i + 64])
        assert reader.buffered <= 64
    assert out == [after]
    (skipped,) = reader.take_skipped()
    assert skipped.header.seqid == 7 and skipped.header.name == "Svc:big"


def test_oversized_frame_header_arriving_byte_by_byte() -> None:
    """The header of a skipped frame may arrive in pieces; it is decoded once it is whole."""
    big = _big(9, 300)
    data = frame(big)
    reader = MessageReader(FRAMED, BINARY, Limits(max_frame_size=100), skip_oversized=True)
    for i in range(len(data)):
        assert reader.feed(data[i : i + 1]) == []
    assert [s.header.seqid for s in reader.take_skipped()] == [9]
    assert reader.buffered == 0


def test_oversized_frame_with_a_garbage_header_is_malformed() -> None:
    """A skipped frame still needs a readable header (to know whose it is), else the stream
    is MalformedMessage."""
    reader = MessageReader(FRAMED, BINARY, Limits(max_frame_size=10), skip_oversized=True)
    with pytest.raises(MalformedMessage):
        reader.feed(frame(b"\x00\x01\x02\x03" * 10))


def test_oversized_frame_ending_inside_its_header_is_malformed() -> None:
    """A frame too short for its own header is MalformedMessage, even with more bytes after."""
    header_and_more = _big(1, 50)
    reader = MessageReader(FRAMED, BINARY, Limits(max_frame_size=4), skip_oversized=True)
    with pytest.raises(MalformedMessage):
        reader.feed(struct.pack(">i", 6) + header_and_more)


def test_without_skip_oversized_a_big_frame_stays_fatal() -> None:
    """By default (the client side of older callers) a big frame is still FrameTooLarge."""
    reader = MessageReader(FRAMED, BINARY, Limits(max_frame_size=100))
    with pytest.raises(FrameTooLarge):
        reader.feed(frame(_big(1, 500)))


def test_buffered_frame_too_large_carries_the_header() -> None:
    """An unframed message over max_frame_size raises FrameTooLarge with its header, so the
    one call (or reply) it belongs to can be answered (or failed) by seqid."""
    data = _big(12, 1000)
    reader = MessageReader(BUFFERED, BINARY, Limits(max_frame_size=200, max_string_size=5000))
    with pytest.raises(FrameTooLarge) as info:
        reader.feed(data)
    assert info.value.header is not None and info.value.header.seqid == 12


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 300)), min_size=1, max_size=8),
    st.integers(1, 200),
)
def test_skipping_keeps_every_small_frame_whatever_the_chunking(
    frames: list[tuple[bool, int]], chunk: int
) -> None:
    """Any mix of small and oversized frames, cut anywhere: the small ones come back in order,
    the big ones are reported in order, and nothing is left buffered."""
    limits = Limits(max_frame_size=200)
    small, big, stream = [], [], b""
    for seqid, (oversized, size) in enumerate(frames):
        data = _big(seqid, 250 + size) if oversized else message(BINARY, "s", [], seqid=seqid)
        (big if oversized else small).append(data)
        stream += frame(data)
    reader = MessageReader(FRAMED, BINARY, limits, skip_oversized=True)
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        out += reader.feed(stream[i : i + chunk])
    assert out == small
    assert [s.header for s in reader.take_skipped()] == [read_header(b, BINARY) for b in big]
    assert reader.buffered == 0
