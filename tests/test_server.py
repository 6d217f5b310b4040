"""ClientConnection in memory: detection, splitting, bad input, disconnects (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_handler import Harness
from thrift.Thrift import TType
from thrift_messages import message
from twisted.internet.testing import StringTransport

from gateway.primitives import DeferredPool
from gateway.proxy.server import ClientConnection
from gateway.thrift import (
    DEFAULT_LIMITS,
    Limits,
    MessageReader,
    ProtocolKind,
    TransportKind,
    frame,
)
from gateway.thrift import read_header as header_of

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")

BINARY, COMPACT = ProtocolKind.BINARY, ProtocolKind.COMPACT


class Setup:
    """A ClientConnection over a StringTransport, in front of test_handler's Harness."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.harness = Harness()
        self.backend = self.harness.backend
        self.stats = self.harness.stats
        self.calls = DeferredPool()
        self.conn = ClientConnection(self.harness.handler, limits, self.calls)
        self.transport = StringTransport()
        self.conn.makeConnection(self.transport)

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


def test_frame_over_max_frame_size_closes_the_connection() -> None:
    """With Limits(max_frame_size=64) a 100-byte frame is refused: the connection closes."""
    s = Setup(Limits(max_frame_size=64))
    padding = 100 - len(frame(alert(BINARY, 1, b"")))
    data = frame(alert(BINARY, 1, b"x" * padding))
    assert len(data) == 100
    s.conn.dataReceived(data)
    assert s.transport.disconnecting and not s.backend.calls
