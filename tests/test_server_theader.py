"""ClientConnection with THeader callers, in memory: replies in the caller's own frame, shared
calls across dialects, key headers, the leader's headers upstream, bad frames, limits.

The THeader calls are written, and the replies read, by the stock Apache Thrift Python
``THeaderProtocol`` (tests/test_thrift_theader.py's ``stock_call``/``stock_read``), so the
gateway's codec is checked against an implementation it did not write.
"""

from __future__ import annotations

import logging
import random
import struct
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_server import BufferingTransport, Setup
from test_thrift_theader import raw_frame, stock_call, stock_read
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift_messages import message

from gateway.contracts import MethodPolicy
from gateway.proxy.connections import ClientLimits
from gateway.proxy.router import Route
from gateway.thrift import (
    DEFAULT_LIMITS,
    HeaderInfo,
    Limits,
    MessageReader,
    ProtocolKind,
    TransportKind,
    encode_frame,
    frame,
    read_header,
)
from gateway.thrift.theader import HEADER_MAGIC

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")

BINARY, COMPACT = ProtocolKind.BINARY, ProtocolKind.COMPACT
METHOD = "alertSupervisor"


def header_call(
    seqid: int,
    text: bytes = b"m",
    *,
    protocol: ProtocolKind = BINARY,
    compress: bool = False,
    headers: dict[bytes, bytes] | None = None,
    oneway: bool = False,
) -> bytes:
    """alertSupervisor(text) as the stock THeader client writes it."""
    if oneway:  # the stock helper writes calls; a oneway frame is made by hand
        payload = message(protocol, METHOD, [(1, TType.STRING, text)], seqid=seqid,
                          mtype=TMessageType.ONEWAY)  # fmt: skip
        return encode_frame(payload, seqid=seqid, protocol=protocol)
    return stock_call(
        protocol, seqid=seqid, compress=compress, headers=headers, name=METHOD,
        args=[(1, TType.STRING, text)],
    )  # fmt: skip


def frames_of(data: bytes) -> list[bytes]:
    """The THeader frames written to a client, split by their length prefix."""
    out = []
    while data:
        (length,) = struct.unpack_from(">i", data)
        out.append(data[: 4 + length])
        data = data[4 + length :]
    return out


def stock_replies(data: bytes, protocol: ProtocolKind = BINARY) -> list[dict[str, Any]]:
    """Every reply frame written to a THeader client, as the stock client reads it."""
    return [stock_read(one, protocol) for one in frames_of(data)]


def framed_seqids(data: bytes) -> list[int]:
    reader = MessageReader(TransportKind.FRAMED, BINARY, DEFAULT_LIMITS)
    return [read_header(m, BINARY).seqid for m in reader.feed(data)]


# -- answers in the caller's own frame --------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("protocol", [BINARY, COMPACT])
def test_theader_call_is_answered_in_a_frame_echoing_its_fields(
    protocol: ProtocolKind, compress: bool
) -> None:
    """A stock THeader call (zlib or not, with info headers), fed byte by byte, is answered in
    a THeader frame of its protocol with its seqid, without transforms or info headers."""
    s = Setup()
    data = header_call(41, protocol=protocol, compress=compress, headers={b"trace": b"t1"})
    for i in range(len(data)):
        s.conn.dataReceived(data[i : i + 1])
    s.answer_all()
    (got,) = stock_replies(s.transport.value(), protocol)
    assert (got["name"], got["type"], got["seqid"], got["frame_seqid"]) == (
        METHOD, TMessageType.REPLY, 41, 41,
    )  # fmt: skip
    assert got["body"] == [(0, TType.STRING, (TType.STRING, b"ack"))]
    assert got["headers"] == {}
    assert got["protocol_id"] == (0 if protocol is BINARY else 2)


def test_reply_echoes_the_request_flags() -> None:
    """The reply frame carries the flags the call's frame had."""
    s = Setup()
    payload = message(BINARY, METHOD, [(1, TType.STRING, b"m")], seqid=3)
    s.conn.dataReceived(encode_frame(payload, seqid=3, protocol=BINARY, flags=5))
    s.answer_all()
    (got,) = stock_replies(s.transport.value())
    assert (got["flags"], got["seqid"]) == (5, 3)


def test_pipelined_theader_calls_each_get_their_own_seqid() -> None:
    """Pipelined THeader calls answered out of order each get a frame with their own seqid."""
    s = Setup()
    s.conn.dataReceived(b"".join(header_call(i, b"m%d" % i) for i in (1, 2, 3)))
    assert len(s.backend.pending) == 3
    s.backend.pending.reverse()
    s.answer_all()
    assert [(g["seqid"], g["frame_seqid"]) for g in stock_replies(s.transport.value())] == [
        (3, 3), (2, 2), (1, 1),
    ]  # fmt: skip


def test_oneway_theader_call_gets_no_reply() -> None:
    """A oneway call in a THeader frame is forwarded and nothing is written back."""
    s = Setup()
    s.conn.dataReceived(header_call(9, oneway=True))
    assert [oneway for _, _, oneway in s.backend.calls] == [True]
    assert s.transport.value() == b"" and not s.transport.disconnecting


# -- coalescing across dialects, key headers, headers upstream ----------------------------------


def test_theader_and_framed_callers_share_one_backend_call() -> None:
    """A THeader binary caller, a framed binary caller and a THeader compact+zlib caller with
    another trace id make the same call: one backend call, each answered in its own dialect
    with its own seqid."""
    s = Setup()
    framed_conn, framed_transport = s.connect()
    zlib_conn, zlib_transport = s.connect()
    s.conn.dataReceived(header_call(1, headers={b"trace": b"a"}))
    framed_conn.dataReceived(frame(message(BINARY, METHOD, [(1, TType.STRING, b"m")], seqid=2)))
    zlib_conn.dataReceived(
        header_call(3, protocol=COMPACT, compress=True, headers={b"trace": b"b"})
    )
    assert len(s.backend.calls) == 1
    s.answer_all()
    assert [g["seqid"] for g in stock_replies(s.transport.value())] == [1]
    assert framed_seqids(framed_transport.value()) == [2]
    assert [g["seqid"] for g in stock_replies(zlib_transport.value(), COMPACT)] == [3]
    assert (s.stats.calls, s.stats.backend_calls, s.stats.coalesced_local) == (3, 1, 2)


def test_key_headers_split_calls_by_their_values_only() -> None:
    """With key_headers = ["tenant"]: callers of one tenant share a call whatever their trace
    ids, another tenant gets its own, and a THeader caller without the header shares the
    plain framed caller's call."""
    s = Setup(raw={"methods": {METHOD: {"key_headers": ["tenant"]}}})
    callers = [
        header_call(1, headers={b"tenant": b"a", b"trace": b"1"}),
        header_call(2, headers={b"tenant": b"a", b"trace": b"2"}),
        header_call(3, headers={b"tenant": b"b", b"trace": b"3"}),
        header_call(4, headers={b"trace": b"4"}),
        frame(message(BINARY, METHOD, [(1, TType.STRING, b"m")], seqid=5)),
    ]
    for data in callers:
        s.connect()[0].dataReceived(data)
    assert len(s.backend.calls) == 3
    assert s.stats.coalesced_local == 0  # counted when answered
    s.answer_all()
    assert (s.stats.calls, s.stats.backend_calls, s.stats.coalesced_local) == (5, 3, 2)


def test_only_the_leaders_info_headers_go_upstream() -> None:
    """The backend call of a shared flight carries the leader's info headers, never a
    follower's; an uncoalesced (oneway) call carries its own."""
    s = Setup()
    leader = {b"trace": b"leader", b"tenant": b"x"}
    s.conn.dataReceived(header_call(1, headers=leader))
    s.connect()[0].dataReceived(header_call(2, headers={b"trace": b"follower"}))
    s.connect()[0].dataReceived(header_call(3, oneway=True))
    assert [dict(h) for h in s.backend.headers] == [leader, {}]


def test_framed_callers_send_no_headers_upstream() -> None:
    """A framed caller's call goes upstream without info headers."""
    s = Setup()
    s.conn.dataReceived(frame(message(BINARY, METHOD, [(1, TType.STRING, b"m")], seqid=1)))
    assert s.backend.headers == [()]


# -- bad frames -----------------------------------------------------------------------------------


BAD_FRAMES = {
    # name: (frame, limits, TApplicationException type of the answer)
    "unknown-transform": (
        raw_frame(bytes((0, 1, 3)), b"junk", seqid=7),
        DEFAULT_LIMITS,
        TApplicationException.INVALID_TRANSFORM,
    ),
    "zlib-bomb": (
        raw_frame(b"\x00\x01\x01", zlib.compress(b"\x00" * (1 << 20), 9), seqid=7),
        Limits(max_frame_size=64 * 1024),
        TApplicationException.PROTOCOL_ERROR,
    ),
    "header-past-frame": (
        frame(struct.pack(">HHiH", HEADER_MAGIC, 0, 7, 50) + b"\x00\x00\x00\x00"),
        DEFAULT_LIMITS,
        TApplicationException.PROTOCOL_ERROR,
    ),
    "header-too-large": (
        raw_frame(b"\x00\x00\x01\x01\x01k" + b"\x00" * 300, seqid=7),
        Limits(max_header_size=128),
        TApplicationException.PROTOCOL_ERROR,
    ),
}


@pytest.mark.parametrize("bad", sorted(BAD_FRAMES))
def test_bad_frame_is_answered_and_closes_only_that_connection(
    bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad THeader frame after a good pipelined call: the good call and another client's
    joined call are answered; the bad frame gets a TApplicationException in a frame with its
    seqid; only that connection closes, with one log line."""
    data, limits, code = BAD_FRAMES[bad]
    s = Setup(limits)
    other, other_transport = s.connect()
    other.dataReceived(header_call(1))
    caplog.set_level(logging.WARNING, logger="gateway.server")
    s.conn.dataReceived(header_call(5) + data)
    assert len(s.backend.calls) == 1  # the good call joined the other client's
    assert not s.transport.disconnecting  # its call is still pending
    s.answer_all()
    replies = stock_replies(s.transport.value())
    assert [(g["seqid"], g["type"]) for g in replies] == [
        (7, TMessageType.EXCEPTION), (5, TMessageType.REPLY),
    ]  # fmt: skip
    assert replies[0]["body"][0] == code
    assert s.transport.disconnecting and not other_transport.disconnecting
    assert [g["seqid"] for g in stock_replies(other_transport.value())] == [1]
    assert len([r for r in caplog.records if r.name == "gateway.server"]) == 1
    assert "bad THeader frame" in caplog.text


def test_frame_without_answerable_fields_closes_without_an_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A frame whose inner protocol the gateway cannot write (JSON) leaves nothing to answer:
    the connection closes with one log line after answering what came before."""
    s = Setup()
    caplog.set_level(logging.WARNING, logger="gateway.server")
    s.conn.dataReceived(header_call(5) + raw_frame(b"\x01\x00", b"{}"))
    s.answer_all()
    assert [g["seqid"] for g in stock_replies(s.transport.value())] == [5]
    assert s.transport.disconnecting
    assert len(caplog.records) == 1


@pytest.mark.parametrize("compress", [False, True])
def test_oversized_theader_call_is_answered_in_its_frame_and_the_connection_kept(
    compress: bool,
) -> None:
    """A THeader call (zlib or not) over max_frame_size is skipped unread and answered
    PROTOCOL_ERROR in a frame with its seqid; the connection goes on to serve the next call."""
    s = Setup(Limits(max_frame_size=256))
    big = header_call(7, random.Random(7).randbytes(2048), compress=compress)
    s.conn.dataReceived(big[:40])
    s.conn.dataReceived(big[40:] + header_call(8))
    s.answer_all()
    replies = stock_replies(s.transport.value())
    assert [(g["seqid"], g["type"]) for g in replies] == [
        (7, TMessageType.EXCEPTION), (8, TMessageType.REPLY),
    ]  # fmt: skip
    assert replies[0]["body"][0] == TApplicationException.PROTOCOL_ERROR
    assert "exceeds max_frame_size 256" in replies[0]["body"][1]
    assert not s.transport.disconnecting
    assert s.stats.oversized_calls == 1 and len(s.backend.calls) == 1


# -- limits ---------------------------------------------------------------------------------------


def test_max_pipelined_holds_theader_calls() -> None:
    """With max_pipelined=2 only two THeader calls are underway; the rest wait, reading stops,
    and every call is answered in its own frame in the end."""
    s = Setup(client_limits=ClientLimits(max_pipelined=2))
    s.conn.dataReceived(b"".join(header_call(i, b"m%d" % i) for i in range(1, 6)))
    assert len(s.backend.pending) == 2 and s.transport.producerState == "paused"
    while s.backend.pending:
        assert len(s.backend.pending) <= 2
        s.backend.reply(b"ack")
    assert [g["seqid"] for g in stock_replies(s.transport.value())] == [1, 2, 3, 4, 5]
    assert s.transport.producerState == "producing"


def test_unread_theader_replies_stop_reading_until_drained() -> None:
    """A THeader client that does not read its reply frames stops being read once more than
    max_unsent_bytes wait, and is read again once they drained."""
    s = Setup(client_limits=ClientLimits(max_unsent_bytes=200))
    transport = BufferingTransport()
    conn = s.factory.buildProtocol(None)
    assert conn is not None
    conn.makeConnection(transport)
    conn.dataReceived(b"".join(header_call(i, b"m%d" % i) for i in range(1, 11)))
    s.answer_all()
    assert transport.unsent > 200 and transport.producerState == "paused"
    assert s.stats.reads_paused_unsent == 1
    transport.flush()
    assert transport.producerState == "producing"
    assert [g["seqid"] for g in stock_replies(transport.value())] == list(range(1, 11))


def test_held_theader_calls_before_a_bad_frame_are_answered_then_closed() -> None:
    """THeader calls held back by max_pipelined ahead of a bad frame are dispatched and
    answered in their frames before the connection closes."""
    s = Setup(client_limits=ClientLimits(max_pipelined=1))
    bad = raw_frame(bytes((0, 1, 3)), b"junk", seqid=9)
    s.conn.dataReceived(b"".join(header_call(i, b"m%d" % i) for i in (1, 2, 3)) + bad)
    assert len(s.backend.pending) == 1 and not s.transport.disconnecting
    s.answer_all()
    assert sorted(g["seqid"] for g in stock_replies(s.transport.value())) == [1, 2, 3, 9]
    assert s.transport.disconnecting


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 64))
def test_random_bytes_after_a_theader_prefix_never_escape(tail: bytes, chunk: int) -> None:
    """Whatever follows the first bytes of a THeader frame, the connection answers, waits or
    closes; it never raises, and nothing stays in flight once it is gone."""
    s = Setup(Limits(max_frame_size=128, max_header_size=64))
    data = header_call(1)[:15] + tail
    for i in range(0, len(data), chunk):
        s.conn.dataReceived(data[i : i + chunk])
    s.answer_all()
    s.conn.connectionLost()
    assert s.stats.in_flight == 0


def test_route_keys_calls_without_key_headers_as_before() -> None:
    """On a route with key_headers = ["tenant"], a plain call and a THeader call without the
    header keep the key of a route without key headers; a tenant, even an empty one, makes
    another key; other headers never change it."""
    data = message(BINARY, METHOD, [(1, TType.STRING, b"m")], seqid=1)
    header = read_header(data, BINARY)

    def key(route: Route, *headers: tuple[bytes, bytes]) -> str:
        info = HeaderInfo(1, 0, BINARY, (), headers) if headers else None
        return route.identify(data, BINARY, header, DEFAULT_LIMITS, info).key

    plain = Route("default", METHOD, MethodPolicy())
    policy = MethodPolicy(key_headers=frozenset({"tenant"}))
    keyed = Route("default", METHOD, policy, key_headers=(b"tenant",))
    assert key(keyed) == key(keyed, (b"trace", b"1")) == key(plain) == key(plain, (b"x", b"1"))
    tenants = {key(keyed, (b"tenant", t), (b"trace", b"2")) for t in (b"a", b"b", b"")}
    assert len(tenants) == 3 and key(plain) not in tenants
    assert key(keyed, (b"tenant", b"a")) == key(keyed, (b"trace", b"9"), (b"tenant", b"a"))
