"""THeader frames: parsing, replies, detection, splitting and bad headers, checked against
the stock Apache Thrift Python THeader implementation (no gateway code on the other side)."""

from __future__ import annotations

import random
import struct
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift.transport.THeaderTransport import (
    THeaderClientType,
    THeaderSubprotocolID,
    THeaderTransformID,
    THeaderTransport,
)
from thrift.transport.TTransport import TMemoryBuffer
from thrift_messages import RICH_ARGS, message, read_struct, write_struct

from gateway.thrift import (
    FrameTooLarge,
    HeaderError,
    HeaderInfo,
    Limits,
    MalformedMessage,
    MessageReader,
    NotThrift,
    ProtocolKind,
    TransportKind,
    WireError,
    call_identity,
    detect,
    encode,
    encode_frame,
    error_answer,
    frame,
    key_headers,
    parse_frame,
    read_header,
    reply_frame,
)
from gateway.thrift.theader import HEADER_MAGIC, TRANSFORM_ZLIB

HEADER = TransportKind.HEADER
BINARY = ProtocolKind.BINARY
COMPACT = ProtocolKind.COMPACT
STOCK_IDS = {BINARY: THeaderSubprotocolID.BINARY, COMPACT: THeaderSubprotocolID.COMPACT}
HEADERS_ONLY = [THeaderClientType.HEADERS]


def stock_call(
    protocol: ProtocolKind,
    *,
    compress: bool = False,
    headers: dict[bytes, bytes] | None = None,
    seqid: int = 7,
    name: str = "echo",
    args: Any = RICH_ARGS,
) -> bytes:
    """One call as Apache Thrift's own THeaderProtocol client writes it on the wire."""
    out = TMemoryBuffer()
    trans = THeaderTransport(out, HEADERS_ONLY, STOCK_IDS[protocol])
    if compress:
        trans.add_transform(THeaderTransformID.ZLIB)
    for key, value in (headers or {}).items():
        trans.set_header(key, value)
    prot = THeaderProtocol(trans, HEADERS_ONLY, STOCK_IDS[protocol])
    prot.writeMessageBegin(name, TMessageType.CALL, seqid)
    write_struct(prot, args)
    prot.writeMessageEnd()
    trans.flush()
    return bytes(out.getvalue())


def stock_read(data: bytes, protocol: ProtocolKind) -> dict[str, Any]:
    """What Apache Thrift's THeaderProtocol client reads from ``data`` (one reply frame)."""
    trans = THeaderTransport(TMemoryBuffer(data), HEADERS_ONLY, STOCK_IDS[protocol])
    prot = THeaderProtocol(trans, HEADERS_ONLY, STOCK_IDS[protocol])
    name, mtype, seqid = prot.readMessageBegin()
    if mtype == TMessageType.EXCEPTION:
        exc = TApplicationException()
        exc.read(prot)
        body: Any = (exc.type, exc.message)
    else:
        body = read_struct(prot)
    prot.readMessageEnd()
    return {
        "name": name,
        "type": mtype,
        "seqid": seqid,
        "body": body,
        "frame_seqid": trans.sequence_id,
        "flags": trans.flags,
        "protocol_id": trans.protocol_id,
        "headers": trans.get_headers(),
    }


def raw_frame(header: bytes, payload: bytes = b"", *, seqid: int = 9, flags: int = 0) -> bytes:
    """A THeader frame with a hand-made variable header (padded to 4 bytes)."""
    header += bytes(-len(header) % 4)
    body = struct.pack(">HHiH", HEADER_MAGIC, flags, seqid, len(header) // 4) + header + payload
    return frame(body)


def split_one(data: bytes, protocol: ProtocolKind = BINARY, limits: Limits | None = None) -> Any:
    reader = MessageReader(HEADER, protocol, limits or Limits())
    frames = reader.feed_frames(data)
    assert len(frames) == 1
    return frames[0]


@pytest.mark.parametrize("protocol", [BINARY, COMPACT])
@pytest.mark.parametrize("compress", [False, True])
def test_stock_client_call_unwraps_to_the_plain_message(
    protocol: ProtocolKind, compress: bool
) -> None:
    """A stock THeader call (zlib or not) splits into the exact message a plain client sends."""
    wire = stock_call(protocol, compress=compress, headers={b"trace": b"abc", b"tenant": b"t1"})
    message_bytes, header, info = split_one(wire, protocol)
    assert message_bytes == message(protocol, "echo", RICH_ARGS, seqid=7)
    assert (header.name, header.seqid) == ("echo", 7)
    assert info.seqid == 7
    assert info.protocol is protocol
    assert info.transforms == ((TRANSFORM_ZLIB,) if compress else ())
    assert dict(info.headers) == {b"trace": b"abc", b"tenant": b"t1"}


@pytest.mark.parametrize("protocol", [BINARY, COMPACT])
def test_call_key_does_not_depend_on_the_dialect(protocol: ProtocolKind) -> None:
    """The same call by a THeader caller and a framed caller has one call key."""
    plain = message(protocol, "echo", RICH_ARGS, seqid=1)
    inner, _, _ = split_one(stock_call(protocol, compress=True, headers={b"x": b"y"}), protocol)
    other = COMPACT if protocol is BINARY else BINARY
    keys = {
        call_identity(data, kind, backend="b", upstream_name="echo").key
        for data, kind in (
            (plain, protocol),
            (inner, protocol),
            (message(other, "echo", RICH_ARGS, seqid=3), other),
        )
    }
    assert len(keys) == 1


@pytest.mark.parametrize("protocol", [BINARY, COMPACT])
@pytest.mark.parametrize("compress", [False, True])
def test_reply_frame_is_read_by_the_stock_client(protocol: ProtocolKind, compress: bool) -> None:
    """A reply frame echoes seqid, flags and protocol, neither the request's transforms nor its
    headers."""
    request = HeaderInfo(
        seqid=-5,
        flags=0x0001,
        protocol=protocol,
        transforms=(TRANSFORM_ZLIB,) if compress else (),
        headers=((b"trace", b"abc"),),
    )
    reply = message(protocol, "echo", [(0, 11, b"ok")], mtype=TMessageType.REPLY, seqid=-5)
    wire = reply_frame(reply, request)
    got = stock_read(wire, protocol)
    assert got["name"] == "echo"
    assert got["type"] == TMessageType.REPLY
    assert (got["seqid"], got["frame_seqid"]) == (-5, -5)
    assert got["flags"] == 0x0001
    assert got["protocol_id"] == STOCK_IDS[protocol]
    assert got["headers"] == {}
    assert got["body"] == [(0, 11, (11, b"ok"))]
    _, info = parse_frame(wire[4:])
    assert info == HeaderInfo(-5, 0x0001, protocol)


def test_reply_frame_applies_the_transforms_given() -> None:
    """A reply compressed on request (zlib) is inflated by the stock client."""
    request = HeaderInfo(4, 0, COMPACT)
    reply = message(COMPACT, "m", [(0, 11, b"z" * 5000)], mtype=TMessageType.REPLY, seqid=4)
    wire = reply_frame(reply, request, transforms=[TRANSFORM_ZLIB])
    assert len(wire) < 200
    assert stock_read(wire, COMPACT)["body"] == [(0, 11, (11, b"z" * 5000))]


def test_reply_carries_only_the_headers_given() -> None:
    """Info headers passed to reply_frame reach the stock client; the request's never do."""
    request = HeaderInfo(1, 0, BINARY, (), ((b"req", b"1"),))
    reply = message(BINARY, "m", [], mtype=TMessageType.REPLY)
    got = stock_read(reply_frame(reply, request, headers=[(b"from", b"upstream")]), BINARY)
    assert got["headers"] == {b"from": b"upstream"}


@settings(max_examples=60, deadline=None)
@given(
    seqid=st.integers(-(2**31), 2**31 - 1),
    flags=st.integers(0, 0xFFFF),
    protocol=st.sampled_from([BINARY, COMPACT]),
    transforms=st.sampled_from([(), (TRANSFORM_ZLIB,)]),  # each kind at most once
    headers=st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=300)), max_size=5),
    payload=st.binary(max_size=2000),
)
def test_encode_then_parse_roundtrips(
    seqid: int,
    flags: int,
    protocol: ProtocolKind,
    transforms: tuple[int, ...],
    headers: list[tuple[bytes, bytes]],
    payload: bytes,
) -> None:
    """parse_frame(encode_frame(...)) gives back every field and the payload."""
    wire = encode_frame(
        payload,
        seqid=seqid,
        protocol=protocol,
        flags=flags,
        transforms=transforms,
        headers=headers,
    )
    assert struct.unpack(">i", wire[:4])[0] == len(wire) - 4
    got, info = parse_frame(wire[4:])
    assert got == payload
    assert info == HeaderInfo(seqid, flags, protocol, transforms, tuple(headers))


def test_cpp_style_padding_and_unknown_info_blocks_are_skipped() -> None:
    """Four bytes of padding on an aligned header, and an unknown info id, end the headers."""
    kv = b"\x01\x01" + b"\x01k" + b"\x01v"
    payload = message(BINARY, "m", [])
    # protocol 0, no transforms, one KEYVALUE block: 8 bytes, padded with 4 more (as C++ does).
    _, _, info = split_one(raw_frame(b"\x00\x00" + kv + b"\x00\x00\x00\x00", payload))
    assert info.headers == ((b"k", b"v"),)
    # An unknown info id (7) ends the info section; what follows it is skipped with it.
    _, _, info = split_one(raw_frame(b"\x00\x00" + kv + b"\x07\x01\x01x\x01y", payload))
    assert info.headers == ((b"k", b"v"),)


def test_header_get_returns_the_last_value() -> None:
    """A repeated info header reads as its last value (what a dict-based peer keeps)."""
    info = HeaderInfo(1, 0, BINARY, (), ((b"a", b"1"), (b"b", b"2"), (b"a", b"3")))
    assert info.get(b"a") == b"3"
    assert info.get(b"missing") is None


def test_key_headers_is_canonical() -> None:
    """Selected headers give bytes independent of order and of other headers; absent differs
    from empty; no names, or none of them present, gives no bytes (a plain caller's key)."""
    one = HeaderInfo(1, 0, BINARY, (), ((b"tenant", b"t1"), (b"trace", b"x")))
    two = HeaderInfo(2, 0, COMPACT, (), ((b"trace", b"y"), (b"tenant", b"t1")))
    assert key_headers(one, [b"tenant"]) == key_headers(two, [b"tenant"])
    assert key_headers(one, [b"trace"]) != key_headers(two, [b"trace"])
    empty = HeaderInfo(1, 0, BINARY, (), ((b"tenant", b""),))
    assert key_headers(empty, [b"tenant"]) != key_headers(None, [b"tenant"])
    assert key_headers(one, [b"tenant", b"zone"]) == key_headers(one, [b"zone", b"tenant"])
    assert key_headers(one, []) == b""
    assert key_headers(one, [b"zone"]) == key_headers(None, [b"zone"]) == b""
    assert key_headers(one, [b"zone", b"tenant"]) != key_headers(one, [b"tenant"])


# -- detection -------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [BINARY, COMPACT])
def test_detects_theader_when_enabled(protocol: ProtocolKind) -> None:
    """A THeader stream is (HEADER, inner protocol); every shorter prefix needs more bytes."""
    wire = stock_call(protocol)
    answers = [detect(wire[:n], header=True) for n in range(len(wire) + 1)]
    decided = answers.index((HEADER, protocol))
    assert answers[:decided] == [None] * decided
    assert set(answers[decided:]) == {(HEADER, protocol)}
    assert decided == 15  # LENGTH, the fixed fields, and the protocol id byte


def test_theader_is_refused_unless_enabled() -> None:
    """Without header=True a THeader stream is NotThrift, as before THeader support."""
    with pytest.raises(NotThrift, match="THeader"):
        detect(stock_call(BINARY))


@pytest.mark.parametrize(
    "prefix",
    [
        b"\x00\x00\x00\x0c\x0f\xff\x00\x00\x00\x00\x00\x01\x00\x01\x00",  # frame too short
        b"\x00\x00\x00\x20\x0f\xff\x00\x00\x00\x00\x00\x01\x00\x01\x01",  # JSON protocol id
        b"\x00\x00\x00\x20\x0f\xfe",  # not the magic, and 0x0f is no name character
    ],
)
def test_bad_theader_prefixes_are_not_thrift(prefix: bytes) -> None:
    """Frames too short for a header, unknown protocol ids and near-magic are refused."""
    with pytest.raises(NotThrift):
        detect(prefix, header=True)


# -- splitting --------------------------------------------------------------------------------


def test_byte_by_byte_and_pipelined() -> None:
    """Fed one byte at a time, pipelined THeader frames come out whole, in order, once."""
    wires = [
        stock_call(COMPACT, seqid=i, compress=i % 2 == 1, headers={b"n": str(i).encode()})
        for i in range(4)
    ]
    stream = b"".join(wires)
    reader = MessageReader(HEADER, COMPACT)
    out: list[Any] = []
    for i in range(len(stream)):
        out += reader.feed_frames(stream[i : i + 1])
    assert [(h.seqid, f.seqid, f.get(b"n")) for _, h, f in out] == [
        (i, i, str(i).encode()) for i in range(4)
    ]
    assert reader.buffered == 0
    # feed() and feed_parsed() give the same inner messages without the frame fields.
    assert MessageReader(HEADER, COMPACT).feed(stream) == [m for m, _, _ in out]


def test_feed_frames_on_framed_connections_has_no_frame_fields() -> None:
    """On a framed connection feed_frames returns None frame fields."""
    msg = message(BINARY, "m", [])
    out = MessageReader(TransportKind.FRAMED, BINARY).feed_frames(frame(msg) * 2)
    assert [(m, f) for m, _, f in out] == [(msg, None), (msg, None)]


def test_encode_needs_the_request_on_header_connections() -> None:
    """encode() wraps a reply in the request's frame, and refuses a THeader reply without it."""
    reply = message(BINARY, "m", [], mtype=TMessageType.REPLY)
    request = HeaderInfo(3, 0, BINARY)
    assert encode(HEADER, reply, request) == reply_frame(reply, request)
    with pytest.raises(ValueError, match="HeaderInfo"):
        encode(HEADER, reply)


# -- bad headers ------------------------------------------------------------------------------


def _error(data: bytes, protocol: ProtocolKind = BINARY, limits: Limits | None = None) -> Any:
    reader = MessageReader(HEADER, protocol, limits or Limits())
    with pytest.raises((MalformedMessage, FrameTooLarge)) as info:
        reader.feed_frames(data)
    return info.value


def _answer(exc: Any, protocol: ProtocolKind = BINARY) -> dict[str, Any] | None:
    answer = error_answer(exc, HEADER, protocol)
    return None if answer is None else stock_read(answer, protocol)


def test_header_length_past_the_frame_is_answered() -> None:
    """A header length beyond the frame: a PROTOCOL_ERROR the stock client reads, echoing seqid
    and flags."""
    body = struct.pack(">HHiH", HEADER_MAGIC, 1, 42, 50) + b"\x00\x00\x00\x00"
    exc = _error(frame(body))
    assert isinstance(exc, HeaderError)
    assert "runs past" in str(exc)
    got = _answer(exc)
    assert got is not None
    assert (got["frame_seqid"], got["seqid"], got["flags"]) == (42, 42, 1)
    assert got["body"][0] == TApplicationException.PROTOCOL_ERROR


@pytest.mark.parametrize("protocol", [BINARY, COMPACT])
def test_unknown_transform_is_answered_with_invalid_transform(protocol: ProtocolKind) -> None:
    """An unknown transform id (snappy, 3): INVALID_TRANSFORM in the caller's protocol."""
    pid = 0 if protocol is BINARY else 2
    exc = _error(raw_frame(bytes((pid, 1, 3)), b"junk", seqid=11), protocol)
    assert isinstance(exc, HeaderError)
    assert exc.code == TApplicationException.INVALID_TRANSFORM
    got = _answer(exc, protocol)
    assert got is not None
    assert got["seqid"] == 11
    assert got["body"][0] == TApplicationException.INVALID_TRANSFORM
    assert "unknown THeader transform 3" in got["body"][1]


def test_header_too_large_is_answered() -> None:
    """A variable header over max_header_size is refused, and answered."""
    big = b"\x00\x00\x01\x01" + b"\x80\x01k" + b"\x00" * 200
    exc = _error(raw_frame(big, b"", seqid=5), limits=Limits(max_header_size=128))
    assert isinstance(exc, HeaderError)
    assert "max_header_size" in str(exc)
    got = _answer(exc)
    assert got is not None
    assert got["seqid"] == 5


def test_decompression_bomb_is_bounded_and_answered() -> None:
    """A zlib payload inflating past max_frame_size is refused without inflating it all."""
    bomb = zlib.compress(b"\x00" * (4 << 20), 9)  # ~4 KiB of wire inflating to 4 MiB
    limits = Limits(max_frame_size=64 * 1024)
    exc = _error(raw_frame(b"\x00\x01\x01", bomb, seqid=3), limits=limits)
    assert isinstance(exc, HeaderError)
    assert "inflates past max_frame_size" in str(exc)
    got = _answer(exc)
    assert got is not None
    assert got["seqid"] == 3
    assert got["body"][0] == TApplicationException.PROTOCOL_ERROR


@pytest.mark.parametrize(
    "payload",
    [b"not zlib at all", zlib.compress(b"x" * 100)[:-3], zlib.compress(b"x") + b"junk"],
)
def test_bad_zlib_payload_is_answered(payload: bytes) -> None:
    """A payload that is not, not all, or more than a zlib stream is a HeaderError."""
    exc = _error(raw_frame(b"\x00\x01\x01", payload))
    assert isinstance(exc, HeaderError)
    assert _answer(exc) is not None


def test_info_string_past_the_header_is_answered() -> None:
    """An info header whose length runs past the header is a HeaderError with an answer."""
    exc = _error(raw_frame(b"\x00\x00\x01\x01\x7fk", message(BINARY, "m", [])))
    assert isinstance(exc, HeaderError)
    assert _answer(exc) is not None


def test_unknown_protocol_cannot_be_answered() -> None:
    """A protocol id the gateway cannot speak (JSON, 1) leaves nothing to answer with."""
    exc = _error(raw_frame(b"\x01\x00", b"{}"))
    assert isinstance(exc, HeaderError)
    assert exc.code == TApplicationException.INVALID_PROTOCOL
    assert exc.frame is None
    assert error_answer(exc, HEADER, BINARY) is None


def test_frame_shorter_than_fixed_fields_cannot_be_answered() -> None:
    """A frame too short to hold a seqid is refused with no answer."""
    exc = _error(frame(b"\x0f\xff\x00\x00"))
    assert isinstance(exc, HeaderError)
    assert error_answer(exc, HEADER, BINARY) is None


def test_plain_frame_on_a_header_connection_is_refused() -> None:
    """A frame without the magic on a THeader connection is a HeaderError."""
    exc = _error(frame(message(BINARY, "m", [])))
    assert isinstance(exc, HeaderError)
    assert "magic" in str(exc)


def test_protocol_change_mid_connection_is_answered_in_the_frame_protocol() -> None:
    """A compact frame on a binary THeader connection is refused, answered in compact."""
    exc = _error(stock_call(BINARY, seqid=1) + stock_call(COMPACT, seqid=2))
    assert isinstance(exc, HeaderError)
    assert exc.code == TApplicationException.INVALID_PROTOCOL
    assert [h.seqid for _, h, _ in exc.frames] == [1]
    got = _answer(exc, COMPACT)
    assert got is not None
    assert got["seqid"] == 2


def test_unreadable_inner_message_is_answered_with_the_frame_seqid() -> None:
    """Garbage where the inner message header should be: answered with the frame's seqid."""
    exc = _error(raw_frame(b"\x00\x00", b"\x80\x01\x00\x07garbage", seqid=77, flags=4))
    assert type(exc) is MalformedMessage
    assert exc.header is None
    got = _answer(exc)
    assert got is not None
    assert (got["name"], got["seqid"], got["frame_seqid"], got["flags"]) == ("", 77, 77, 4)


def test_no_answer_on_a_header_connection_without_frame_fields() -> None:
    """A decoded message header alone is not enough to answer a THeader client."""
    exc = MalformedMessage("bad", read_header(message(BINARY, "m", [], seqid=3), BINARY))
    assert error_answer(exc, HEADER, BINARY) is None
    assert error_answer(exc, TransportKind.FRAMED, BINARY) is not None


def test_oversized_frame_is_refused_before_buffering() -> None:
    """A THeader frame length over max_frame_size fails on its first 4 bytes, unanswered."""
    exc = _error(struct.pack(">i", 1 << 20) + b"\x0f\xff", limits=Limits(max_frame_size=1024))
    assert isinstance(exc, FrameTooLarge)
    assert error_answer(exc, HEADER, BINARY) is None


def test_buffered_malformed_answer_names_the_call() -> None:
    """Off THeader, error_answer is the PROTOCOL_ERROR for the call's name and seqid, as is."""
    bad = message(BINARY, "m", [], seqid=12)[:-1] + b"\x63\x00\x01"  # bad type id, not STOP
    reader = MessageReader(TransportKind.BUFFERED, BINARY)
    with pytest.raises(MalformedMessage) as info:
        reader.feed(bad)
    answer = error_answer(info.value, TransportKind.BUFFERED, BINARY)
    assert answer is not None
    prot = TBinaryProtocol(TMemoryBuffer(answer))
    assert prot.readMessageBegin() == ("m", TMessageType.EXCEPTION, 12)
    exc = TApplicationException()
    exc.read(prot)
    assert exc.type == TApplicationException.PROTOCOL_ERROR


@settings(max_examples=200, deadline=None)
@given(
    header=st.binary(max_size=40),
    payload=st.binary(max_size=60),
    words=st.integers(0, 0xFFFF),
    cut=st.integers(0, 200),
)
def test_random_headers_only_raise_wire_errors(
    header: bytes, payload: bytes, words: int, cut: int
) -> None:
    """Whatever follows the magic, the reader returns messages or raises a WireError, and any
    answer it offers is a frame the stock client can read."""
    body = struct.pack(">HHiH", HEADER_MAGIC, 0, 1, words) + header + payload
    data = frame(body)[: 4 + cut] if cut < len(body) else frame(body)
    reader = MessageReader(HEADER, BINARY, Limits(max_frame_size=4096, max_header_size=64))
    try:
        reader.feed_frames(data)
    except WireError as exc:
        answer = error_answer(exc, HEADER, BINARY)
        if answer is not None:
            assert stock_read(answer, exc.frame.protocol if exc.frame else BINARY)["seqid"] == 1


# -- oversized frames, skipped ------------------------------------------------------------------

SMALL = Limits(max_frame_size=1024)


def _big_call(seqid: int, *, compress: bool = False, protocol: ProtocolKind = BINARY) -> bytes:
    """A stock THeader call over SMALL's max_frame_size, even when zlib-compressed."""
    blob = random.Random(seqid).randbytes(4096)  # incompressible
    return stock_call(
        protocol, seqid=seqid, compress=compress, headers={b"tenant": b"t"},
        args=[(1, TType.STRING, blob)],
    )  # fmt: skip


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("protocol", [BINARY, COMPACT])
def test_oversized_frame_is_skipped_with_its_headers(
    compress: bool, protocol: ProtocolKind
) -> None:
    """With skip_oversized, a THeader call over max_frame_size (zlib or not), fed in small
    pieces, is reported with its message header and frame fields, never buffered whole, and
    the call after it comes out."""
    big = _big_call(5, compress=compress, protocol=protocol)
    assert len(big) > 2 * SMALL.max_frame_size
    stream = big + stock_call(protocol, seqid=6)
    reader = MessageReader(HEADER, protocol, SMALL, skip_oversized=True)
    out: list[Any] = []
    most = 0
    for i in range(0, len(stream), 100):
        out += reader.feed_frames(stream[i : i + 100])
        most = max(most, reader.buffered)
    assert most < SMALL.max_frame_size
    (skipped,) = reader.take_skipped()
    assert (skipped.header.name, skipped.header.seqid, skipped.size) == ("echo", 5, len(big) - 4)
    assert skipped.frame is not None
    assert (skipped.frame.seqid, skipped.frame.get(b"tenant")) == (5, b"t")
    assert skipped.frame.transforms == ((TRANSFORM_ZLIB,) if compress else ())
    assert [h.seqid for _, h, _ in out] == [6]


def test_oversized_frame_with_a_bad_header_is_answered() -> None:
    """An oversized THeader frame whose header cannot be used (unknown transform) is a
    HeaderError with its frame fields, as a small one is, without waiting for its payload."""
    data = raw_frame(bytes((0, 1, 3)), b"x" * 2000, seqid=8)[:64]
    reader = MessageReader(HEADER, BINARY, SMALL, skip_oversized=True)
    with pytest.raises(HeaderError) as info:
        reader.feed_frames(data)
    assert info.value.code == TApplicationException.INVALID_TRANSFORM
    got = _answer(info.value)
    assert got is not None and got["seqid"] == 8


def test_oversized_frame_with_a_huge_header_is_refused_on_its_first_bytes() -> None:
    """A header over max_header_size in an oversized frame is refused once its protocol id
    arrived (not after max_header_size bytes)."""
    data = struct.pack(">iHHiH", 1 << 20, HEADER_MAGIC, 0, 4, 0xFFFF) + b"\x00\x00\x00\x00\x00"
    reader = MessageReader(HEADER, BINARY, SMALL, skip_oversized=True)
    with pytest.raises(HeaderError, match="max_header_size") as info:
        reader.feed_frames(data)
    assert info.value.frame is not None and info.value.frame.seqid == 4


def test_oversized_compressed_frame_without_a_message_header_is_malformed() -> None:
    """A zlib payload that yields no message header from its first bytes (here: endless empty
    stored blocks) is refused with the frame fields once the bound is reached."""
    empty_blocks = b"\x00\x00\x00\xff\xff" * 60_000  # BFINAL 0, stored, LEN 0
    data = raw_frame(b"\x00\x01\x01", b"\x78\x01" + empty_blocks, seqid=9)
    reader = MessageReader(HEADER, BINARY, SMALL, skip_oversized=True)
    with pytest.raises(MalformedMessage, match="no message header") as info:
        for i in range(0, len(data), 4096):
            reader.feed_frames(data[i : i + 4096])
    assert info.value.frame is not None and info.value.frame.seqid == 9
    assert reader.buffered == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 0xFFFF), st.integers(1, 40))
def test_random_oversized_frames_only_skip_or_raise_wire_errors(
    tail: bytes, words: int, chunk: int
) -> None:
    """Whatever an oversized THeader frame holds, a skipping reader skips it (reporting its
    frame fields) or waits or raises a WireError; nothing else escapes."""
    head = struct.pack(">iHHiH", 10_000, HEADER_MAGIC, 0, 1, words % 64)
    data = head + tail
    reader = MessageReader(HEADER, BINARY, Limits(max_frame_size=64), skip_oversized=True)
    try:
        for i in range(0, len(data), chunk):
            reader.feed_frames(data[i : i + chunk])
    except WireError:
        return
    for skipped in reader.take_skipped():
        assert skipped.frame is not None and skipped.frame.seqid == 1
