"""send_now: an idle TCP connection's bytes go out at once; a busy one keeps its order; an
upstream connection sends at once only while it has no call outstanding."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from thrift.Thrift import TType
from thrift_messages import message
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.task import deferLater

from gateway.proxy.upstream import UpstreamPool
from gateway.proxy.writes import send_now
from gateway.thrift import DEFAULT_LIMITS, ProtocolKind, TransportKind, encode, replace_header

pytestmark = pytest.mark.integration


class Collect(protocol.Protocol):
    def __init__(self, want: int) -> None:
        self.want = want
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.want and not self.done.called:
            self.done.callback(self.data)


async def pair(want: int, ours: protocol.Protocol | None = None) -> tuple[Any, Collect, Any]:
    """(our side's transport, the peer's collector, the listening port)."""
    peer = Collect(want)
    factory = protocol.Factory.forProtocol(lambda: peer)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    connected = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
        ours if ours is not None else protocol.Protocol(),
    )
    return connected.transport, peer, port


@pytest_twisted.ensureDeferred
async def test_idle_connection_sends_at_once_without_registering_for_writes() -> None:
    """On an idle connection the bytes leave in the call itself: nothing is buffered and
    the socket is not registered with the reactor for writability."""
    transport, peer, port = await pair(5)
    try:
        send_now(transport, b"hello")
        assert transport.dataBuffer == b"" and not transport._tempDataBuffer
        assert transport not in reactor.getWriters()
        assert await peer.done == b"hello"
    finally:
        transport.loseConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_bytes_queued_before_keep_their_order() -> None:
    """With bytes still buffered by write(), send_now queues behind them."""
    transport, peer, port = await pair(6)
    try:
        transport.write(b"abc")  # buffered until the reactor's next turn
        send_now(transport, b"def")
        assert await peer.done == b"abcdef"
    finally:
        transport.loseConnection()
        await port.stopListening()


def call_message(text: bytes) -> bytes:
    return message(ProtocolKind.BINARY, "alertSupervisor", [(1, TType.STRING, text)], seqid=7)


@pytest_twisted.ensureDeferred
async def test_upstream_pool_sends_at_once_only_a_call_alone_in_the_pool() -> None:
    """Pipelined (`pipelining = true`): a call with no other call underway in its pool leaves
    in submit() itself; one made
    while another awaits its reply is buffered for the reactor's turn (so a busy pool sends
    a turn's calls together), and both reach the backend in order."""
    peer = Collect(0)
    factory = protocol.Factory.forProtocol(lambda: peer)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    pool = UpstreamPool(
        reactor, "127.0.0.1", port.getHost().port, transport=TransportKind.FRAMED,
        protocol=ProtocolKind.BINARY, limits=DEFAULT_LIMITS, connections=1, pipelining=True,
    )  # fmt: skip
    pool.start()
    try:
        while not pool._live:  # connecting
            await deferLater(reactor, 0.01)
        (transport,) = [conn.transport for conn in pool._live]
        first, second = call_message(b"a"), call_message(b"b")
        peer.want = len(first) + len(second) + 8
        pool.call(first, timeout=5).addErrback(lambda _: None)
        assert transport.dataBuffer == b"" and not transport._tempDataBuffer
        assert transport not in reactor.getWriters()
        pool.call(second, timeout=5).addErrback(lambda _: None)
        assert transport in reactor.getWriters()  # waits for the reactor's turn
        received = await peer.done
        # The pool's own seqids (1, 2), not the callers' 7.
        sent = [
            replace_header(m, ProtocolKind.BINARY, seqid=n) for n, m in ((1, first), (2, second))
        ]
        assert received == b"".join(encode(TransportKind.FRAMED, m) for m in sent)
    finally:
        pool.stop()
        await port.stopListening()
