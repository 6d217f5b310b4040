"""ClientConnection in memory: detection, splitting, bad input, disconnects (no sockets)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_handler import Harness
from thrift.Thrift import TMessageType, TType
from thrift_messages import message
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from gateway.errors import PROTOCOL_ERROR
from gateway.primitives import DeferredPool
from gateway.proxy.connections import DEFAULT_CLIENT_LIMITS, ClientLimits
from gateway.proxy.server import ClientConnection, GatewayFactory
from gateway.thrift import (
    DEFAULT_LIMITS,
    Limits,
    MessageReader,
    ProtocolKind,
    TransportKind,
    frame,
    parse_application_exception,
)
from gateway.thrift import read_header as header_of

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")

BINARY, COMPACT = ProtocolKind.BINARY, ProtocolKind.COMPACT


class Setup:
    """A ClientConnection over a StringTransport, in front of test_handler's Harness."""

    def __init__(
        self,
        limits: Limits = DEFAULT_LIMITS,
        client_limits: ClientLimits = DEFAULT_CLIENT_LIMITS,
        raw: dict[str, Any] | None = None,
    ) -> None:
        """``raw``: the gateway config (as parsed TOML) of the Harness, default none."""
        self.harness = Harness(raw)
        self.backend = self.harness.backend
        self.stats = self.harness.stats
        self.clock = self.harness.clock
        self.calls = DeferredPool()
        self.factory = GatewayFactory(
            self.harness.handler,
            limits,
            self.calls,
            clock=self.clock,
            stats=self.stats,
            client_limits=client_limits,
        )
        self.factory.doStart()
        self.conn, self.transport = self.connect()

    def connect(self) -> tuple[ClientConnection, StringTransport]:
        """One more client connection to the same factory (a StringTransport)."""
        conn = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert conn is not None
        transport = StringTransport()
        conn.makeConnection(transport)
        return conn, transport

    def answer_all(self) -> None:
        while self.backend.pending:
            self.backend.reply(b"ack")

    def replies(self, transport: TransportKind, protocol: ProtocolKind) -> list[int]:
        reader = MessageReader(transport, protocol, DEFAULT_LIMITS)
        return [header_of(m, protocol).seqid for m in reader.feed(self.transport.value())]


def alert(protocol: ProtocolKind, seqid: int, text: bytes = b"m") -> bytes:
    return message(protocol, "alertSupervisor", [(1, TType.STRING, text)], seqid=seqid)


@pytest.mark.parametrize("protocol", [BINARY, COMPACT, ProtocolKind.BINARY_NONSTRICT])
@pytest.mark.parametrize("transport", [TransportKind.FRAMED, TransportKind.BUFFERED])
def test_each_transport_and_protocol_is_detected_and_answered(
    transport: TransportKind, protocol: ProtocolKind
) -> None:
    """A call in any supported transport/protocol, fed byte by byte, gets its reply."""
    s = Setup()
    data = alert(protocol, 41)
    data = frame(data) if transport is TransportKind.FRAMED else data
    for i in range(len(data)):
        s.conn.dataReceived(data[i : i + 1])
    s.answer_all()
    assert s.replies(transport, protocol) == [41]


def test_pipelined_calls_before_garbage_are_still_answered() -> None:
    """Calls complete before bad bytes in the same read are answered; then the connection closes."""
    s = Setup()
    s.conn.dataReceived(frame(alert(BINARY, 1, b"a")) + frame(alert(BINARY, 2, b"b")) + b"\xff" * 8)
    s.answer_all()
    assert sorted(s.replies(TransportKind.FRAMED, BINARY)) == [1, 2]
    assert s.transport.disconnecting


def test_disconnect_cancels_only_this_clients_waiters() -> None:
    """A client going away leaves nothing in flight in the node's drain pool."""
    s = Setup()
    s.conn.dataReceived(frame(alert(BINARY, 1)))
    assert len(s.calls) == 1
    s.conn.connectionLost()
    assert len(s.calls) == 0 and s.stats.in_flight == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_random_bytes_never_escape_as_exceptions(data: bytes, chunk: int) -> None:
    """Whatever bytes a client sends, the connection answers, waits or closes; it never raises."""
    s = Setup()
    for i in range(0, len(data), chunk):
        s.conn.dataReceived(data[i : i + chunk])
    s.answer_all()
    s.conn.connectionLost()
    assert s.stats.in_flight == 0


def _padded_call(size: int, seqid: int) -> bytes:
    """A framed alertSupervisor call of exactly ``size`` bytes, frame prefix included."""
    padding = size - len(frame(alert(BINARY, seqid, b"")))
    data = frame(alert(BINARY, seqid, b"x" * padding))
    assert len(data) == size
    return data


def _app_exceptions(
    s: Setup, transport: TransportKind = TransportKind.FRAMED
) -> list[tuple[int, int, str]]:
    """(seqid, code, message) of every TApplicationException written to the client."""
    reader = MessageReader(transport, BINARY, DEFAULT_LIMITS)
    return [
        (header_of(m, BINARY).seqid, *parse_application_exception(m, BINARY))
        for m in reader.feed(s.transport.value())
    ]


def _not_a_call(seqid: int) -> bytes:
    """A framed REPLY sent by a client: the handler answers it at once (INVALID_MESSAGE_TYPE)."""
    return frame(message(BINARY, "alertSupervisor", [], seqid=seqid, mtype=TMessageType.REPLY))


def test_framed_call_over_max_frame_size_is_answered_and_the_connection_kept() -> None:
    """With max_frame_size=64 a 100-byte framed call is skipped unread and answered with a
    PROTOCOL_ERROR for its seqid; the connection stays open and serves the next call."""
    s = Setup(Limits(max_frame_size=64))
    s.conn.dataReceived(_padded_call(100, 7)[:30])  # the big frame arrives in pieces
    s.conn.dataReceived(_padded_call(100, 7)[30:] + frame(alert(BINARY, 8)))
    assert _app_exceptions(s) == [
        (7, PROTOCOL_ERROR, "gateway: call of 96 bytes exceeds max_frame_size 64")
    ]
    assert not s.transport.disconnecting and len(s.backend.calls) == 1
    s.transport.clear()
    s.answer_all()
    assert s.replies(TransportKind.FRAMED, BINARY) == [8]
    assert s.stats.oversized_calls == 1 and s.stats.errors == 1


def test_buffered_call_over_max_frame_size_is_answered_then_closed() -> None:
    """Unframed, an oversized call cannot be skipped: it is answered PROTOCOL_ERROR by seqid
    (its header was read) and the connection closes."""
    s = Setup(Limits(max_frame_size=64, max_string_size=1000))
    s.conn.dataReceived(alert(BINARY, 5, b"x" * 100))
    ((seqid, code, text),) = _app_exceptions(s, TransportKind.BUFFERED)
    assert seqid == 5 and code == PROTOCOL_ERROR and "exceeds max_frame_size 64" in text
    assert s.transport.disconnecting and not s.backend.calls


# -- backpressure and limits (issue 8, item 9) -------------------------------------------------


class BufferingTransport(StringTransport):
    """A StringTransport that, like Twisted's TCP transport, pauses its streaming producer
    while more than ``bufferSize`` written bytes are unsent, and resumes it on ``flush``."""

    bufferSize = 65536

    def __init__(self) -> None:
        super().__init__()
        self.unsent = 0
        self.producer_paused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unsent += len(data)
        if self.producer is not None and self.streaming and self.unsent > self.bufferSize:
            self.producer_paused = True
            self.producer.pauseProducing()

    def flush(self) -> None:
        """The client read everything written so far."""
        self.unsent = 0
        if self.producer is not None and self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()


def _calls(n: int, start: int = 1) -> bytes:
    """``n`` framed calls, seqids from ``start``, distinct arguments (none coalesce)."""
    return b"".join(frame(alert(BINARY, i, b"m%d" % i)) for i in range(start, start + n))


def test_unread_replies_over_max_unsent_bytes_stop_reading_until_drained() -> None:
    """Once more than max_unsent_bytes of replies wait unsent, the socket is not read (the
    connection is its transport's streaming producer); it is read again once they drained."""
    s = Setup(client_limits=ClientLimits(max_unsent_bytes=200))
    transport = BufferingTransport()
    conn = s.factory.buildProtocol(None)
    assert conn is not None
    conn.makeConnection(transport)
    assert transport.producer is conn and transport.streaming
    assert transport.bufferSize == 200
    conn.dataReceived(_calls(10))
    s.answer_all()
    assert transport.unsent > 200 and transport.producerState == "paused"
    assert s.stats.clients_paused == 1 and s.stats.reads_paused_unsent == 1
    transport.flush()
    assert transport.producerState == "producing" and s.stats.clients_paused == 0


def test_max_pipelined_holds_further_calls_and_stops_reading() -> None:
    """With max_pipelined=2 only two calls are underway at once: the rest of the read waits
    in order, the socket is not read meanwhile, and every call is answered in the end."""
    s = Setup(client_limits=ClientLimits(max_pipelined=2))
    s.conn.dataReceived(_calls(5))
    assert len(s.backend.pending) == 2 and s.stats.in_flight == 2
    assert s.transport.producerState == "paused"
    assert s.stats.reads_paused_pipelined == 1 and s.stats.clients_paused == 1
    while s.backend.pending:
        assert len(s.backend.pending) <= 2 and s.stats.in_flight <= 2
        s.backend.reply(b"ack")
    assert s.replies(TransportKind.FRAMED, BINARY) == [1, 2, 3, 4, 5]
    assert s.transport.producerState == "producing" and s.stats.clients_paused == 0


def test_calls_answered_at_once_never_stall_the_pipeline() -> None:
    """Calls the handler answers synchronously (here: not calls at all) pass through a
    max_pipelined=1 connection without pausing it."""
    s = Setup(client_limits=ClientLimits(max_pipelined=1))
    s.conn.dataReceived(b"".join(_not_a_call(i) for i in range(1, 6)))
    assert [seqid for seqid, _, _ in _app_exceptions(s)] == [1, 2, 3, 4, 5]
    assert s.transport.producerState == "producing" and s.stats.reads_paused_pipelined == 0


def test_held_calls_before_bad_bytes_are_answered_then_the_connection_closes() -> None:
    """Calls held back by max_pipelined ahead of garbage are still dispatched and answered
    before the connection closes."""
    s = Setup(client_limits=ClientLimits(max_pipelined=1))
    s.conn.dataReceived(_calls(3) + b"\xff" * 8)
    assert len(s.backend.pending) == 1 and not s.transport.disconnecting
    s.answer_all()
    assert s.replies(TransportKind.FRAMED, BINARY) == [1, 2, 3]
    assert s.transport.disconnecting


def test_idle_connection_is_closed_by_the_sweep_after_idle_timeout() -> None:
    """With idle_timeout=10 a silent connection is closed at the sweep reaching 10 s; one
    that sent bytes meanwhile, or has a call pending, stays."""
    s = Setup(client_limits=ClientLimits(idle_timeout=10))
    talker, talker_transport = s.connect()
    waiter, waiter_transport = s.connect()
    waiter.dataReceived(_calls(1))  # the backend never answers it
    s.clock.advance(7.5)
    talker.dataReceived(_not_a_call(1))  # answered at once
    s.clock.advance(2.4)
    assert not s.transport.disconnecting
    s.clock.advance(0.1)
    assert s.transport.disconnecting and s.stats.idle_closed == 1
    assert not talker_transport.disconnecting and not waiter_transport.disconnecting
    s.clock.advance(100)
    assert talker_transport.disconnecting and not waiter_transport.disconnecting


def test_idle_close_stuck_behind_unread_replies_is_aborted_at_the_next_sweep() -> None:
    """A graceful idle close that did not finish by the next sweep (the client reads nothing,
    so unsent replies never flush) becomes an abort."""
    s = Setup(client_limits=ClientLimits(idle_timeout=4))
    s.clock.advance(4)
    # StringTransport.abortConnection sets `disconnected` (its docstring says `aborted`).
    assert s.transport.disconnecting and not s.transport.disconnected
    s.clock.advance(1)
    assert s.transport.disconnected


def test_no_idle_sweep_by_default() -> None:
    """idle_timeout defaults to 0 (never): an idle connection stays open indefinitely."""
    s = Setup()
    s.clock.advance(10 * 24 * 3600)
    assert not s.transport.disconnecting and not s.clock.getDelayedCalls()


def test_connections_beyond_max_connections_are_refused_and_logged_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Beyond max_connections buildProtocol returns None (the port closes the socket), each
    refusal is counted, and the log says so once per 10 s with the count held back."""
    s = Setup(client_limits=ClientLimits(max_connections=2))
    s.connect()
    caplog.set_level(logging.WARNING, logger="gateway.server")
    for _ in range(5):
        assert s.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001)) is None
    assert s.stats.connections_refused == 5 and s.stats.client_connections == 2
    assert len(caplog.records) == 1
    assert "refusing client 127.0.0.1:40001: max_connections (2) reached" in caplog.text
    s.clock.advance(10)
    assert s.factory.buildProtocol(None) is None
    assert "(4 more like this in the last 10s)" in caplog.records[-1].getMessage()
    s.conn.connectionLost()
    assert s.factory.buildProtocol(None) is not None
