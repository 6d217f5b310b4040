"""send_now: an idle TCP connection's bytes go out at once; a busy one keeps its order."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol

from gateway.proxy.writes import send_now

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


async def pair(want: int) -> tuple[Any, Collect, Any]:
    """(our side's transport, the peer's collector, the listening port)."""
    peer = Collect(want)
    factory = protocol.Factory.forProtocol(lambda: peer)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    ours = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), protocol.Protocol()
    )
    return ours.transport, peer, port


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
