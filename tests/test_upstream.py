"""UpstreamConnection and UpstreamPool in memory: seqid matching, timeouts, overload, loss."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from thrift.Thrift import TMessageType, TType
from thrift_messages import message
from twisted.internet.defer import CancelledError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gateway.errors import (
    BackendTimeout,
    BackendUnavailable,
    ConnectionLost,
    GatewayError,
    Origin,
    Overloaded,
    ReplyTooLarge,
)
from gateway.proxy.upstream import UpstreamConnection, UpstreamPool
from gateway.thrift import (
    DEFAULT_LIMITS,
    Limits,
    MessageReader,
    ProtocolKind,
    TransportKind,
    frame,
    read_header,
)

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")

BINARY, FRAMED = ProtocolKind.BINARY, TransportKind.FRAMED
BUFFERED = TransportKind.BUFFERED


def call(text: bytes, seqid: int = 1) -> bytes:
    return message(BINARY, "alertSupervisor", [(1, TType.STRING, text)], seqid=seqid)


def reply(text: bytes, seqid: int) -> bytes:
    return frame(
        message(
            BINARY,
            "alertSupervisor",
            [(0, TType.STRING, text)],
            mtype=TMessageType.REPLY,
            seqid=seqid,
        )
    )


def sent_seqids(transport: StringTransport, kind: TransportKind = FRAMED) -> list[int]:
    reader = MessageReader(kind, BINARY, DEFAULT_LIMITS)
    return [read_header(m, BINARY).seqid for m in reader.feed(transport.value())]


def connected(
    limits: Limits = DEFAULT_LIMITS, transport_kind: TransportKind = FRAMED
) -> tuple[UpstreamConnection, StringTransport]:
    conn = UpstreamConnection(transport_kind, BINARY, limits)
    transport = StringTransport()
    conn.makeConnection(transport)
    return conn, transport


def collect(d: Any) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def test_each_call_gets_a_unique_upstream_seqid() -> None:
    """Calls sent with the same client seqid go upstream with distinct seqids."""
    conn, transport = connected()
    conn.send(call(b"a", seqid=5), oneway=False)
    conn.send(call(b"b", seqid=5), oneway=False)
    ids = sent_seqids(transport)
    assert len(set(ids)) == 2


def test_out_of_order_replies_are_matched_by_seqid() -> None:
    """A reply arriving before an earlier call's reply goes to its own caller."""
    conn, transport = connected()
    first = collect(conn.send(call(b"a"), oneway=False))
    second = collect(conn.send(call(b"b"), oneway=False))
    id_a, id_b = sent_seqids(transport)
    conn.dataReceived(reply(b"ack:b", id_b) + reply(b"ack:a", id_a))
    assert read_header(first[0], BINARY).seqid == id_a and b"ack:a" in first[0]
    assert read_header(second[0], BINARY).seqid == id_b and b"ack:b" in second[0]


def test_reply_for_a_cancelled_call_is_dropped() -> None:
    """A late reply whose caller gave up is ignored, and the connection stays usable."""
    conn, transport = connected()
    gone = conn.send(call(b"a"), oneway=False)
    gone.addErrback(lambda f: f.trap(CancelledError))
    gone.cancel()
    (id_a,) = sent_seqids(transport)
    conn.dataReceived(reply(b"ack:a", id_a))
    assert conn.outstanding == 0 and not transport.disconnecting


def test_connection_loss_fails_every_pending_call() -> None:
    """Losing the connection fails every outstanding call with BackendUnavailable."""
    conn, _ = connected()
    outs = [collect(conn.send(call(t), oneway=False)) for t in (b"a", b"b")]
    conn.connectionLost(Failure(ConnectionError("reset")))
    assert all(isinstance(o[0], Failure) and o[0].check(BackendUnavailable) for o in outs)


def test_garbage_from_the_backend_drops_the_connection() -> None:
    """Undecodable bytes from the backend abort the connection rather than guessing."""
    conn, transport = connected()
    conn.dataReceived(b"\xff\xff\xff\xff")
    assert transport.disconnecting or getattr(transport, "disconnected", False)


def test_replies_ahead_of_bad_bytes_in_one_read_are_delivered() -> None:
    """A reply that arrived whole in the same read as later garbage goes to its caller; only
    the calls still pending when the connection drops fail (ConnectionLost)."""
    conn, transport = connected()
    first = collect(conn.send(call(b"a"), oneway=False))
    second = collect(conn.send(call(b"b"), oneway=False))
    id_a, _ = sent_seqids(transport)
    conn.dataReceived(reply(b"ack:a", id_a) + b"\xff\xff\xff\xff")
    assert first and isinstance(first[0], bytes) and b"ack:a" in first[0]
    assert transport.disconnecting and not second
    conn.connectionLost(Failure(ConnectionError("aborted")))
    assert second[0].check(ConnectionLost)


def _big_reply(seqid: int, size: int) -> bytes:
    return reply(b"x" * size, seqid)


def test_oversized_reply_fails_only_its_own_call() -> None:
    """A framed reply over max_frame_size fails its call alone (ReplyTooLarge, origin BACKEND);
    the replies around it, later calls and the connection itself are unaffected."""
    conn, transport = connected(Limits(max_frame_size=200, max_string_size=10_000))
    outs = [collect(conn.send(call(t), oneway=False)) for t in (b"a", b"b", b"c")]
    id_a, id_b, id_c = sent_seqids(transport)
    stream = reply(b"ack:a", id_a) + _big_reply(id_b, 5000) + reply(b"ack:c", id_c)
    for i in range(0, len(stream), 700):  # the big reply streams in over several reads
        conn.dataReceived(stream[i : i + 700])
    assert b"ack:a" in outs[0][0] and b"ack:c" in outs[2][0]
    (failure,) = outs[1]
    assert failure.check(ReplyTooLarge) and failure.value.origin is Origin.BACKEND
    assert "reply of 5" in failure.getErrorMessage()
    assert "exceeds max_frame_size 200" in failure.getErrorMessage()
    assert not transport.disconnecting and conn.outstanding == 0
    transport.clear()
    later = collect(conn.send(call(b"d"), oneway=False))
    (id_d,) = sent_seqids(transport)
    conn.dataReceived(reply(b"ack:d", id_d))
    assert b"ack:d" in later[0]


def test_oversized_buffered_reply_delivers_what_came_before_then_drops() -> None:
    """Unframed, a reply over max_frame_size cannot be skipped: replies ahead of it are
    delivered, its own call fails with ReplyTooLarge, the others once the connection drops."""
    conn, transport = connected(Limits(max_frame_size=200, max_string_size=10_000), BUFFERED)
    outs = [collect(conn.send(call(t), oneway=False)) for t in (b"a", b"b", b"c")]
    id_a, id_b, _ = sent_seqids(transport, BUFFERED)
    unframed = [r[4:] for r in (reply(b"ack:a", id_a), _big_reply(id_b, 5000))]
    conn.dataReceived(b"".join(unframed))
    assert b"ack:a" in outs[0][0]
    assert outs[1][0].check(ReplyTooLarge)
    assert transport.disconnecting and not outs[2]
    conn.connectionLost(Failure(ConnectionError("aborted")))
    assert outs[2][0].check(ConnectionLost)
    assert isinstance(outs[1][0].value, GatewayError)


# -- the pool, on a memory reactor ------------------------------------------------------------


def pool(reactor: MemoryReactorClock, **kw: Any) -> UpstreamPool:
    options: dict[str, Any] = {"connections": 1, "max_concurrency": 1, "queue_size": 1}
    options.update(kw)
    return UpstreamPool(
        reactor, "127.0.0.1", 9, transport=FRAMED, protocol=BINARY, limits=DEFAULT_LIMITS, **options
    )


def connect_all(reactor: MemoryReactorClock) -> list[tuple[Any, StringTransport]]:
    """Complete every pending connection attempt of the memory reactor."""
    connections = []
    for _host, _port, factory, _timeout, _bind in reactor.tcpClients:
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        connections.append((proto, transport))
    reactor.tcpClients.clear()
    return connections


def test_call_times_out_with_backend_timeout() -> None:
    """A call not answered within its timeout fails with BackendTimeout naming the limit."""
    reactor = MemoryReactorClock()
    p = pool(reactor)
    p.start()
    connect_all(reactor)
    out = collect(p.call(call(b"a"), timeout=2.0))
    reactor.advance(2.0)
    assert out[0].check(BackendTimeout) and "2s" in out[0].getErrorMessage()


def test_full_queue_is_overloaded_at_once() -> None:
    """Beyond max_concurrency + queue_size a call fails at once with Overloaded."""
    reactor = MemoryReactorClock()
    p = pool(reactor)
    p.start()
    connect_all(reactor)
    underway = p.call(call(b"a"), timeout=30)
    queued = p.call(call(b"b"), timeout=30)
    refused = collect(p.call(call(b"c"), timeout=30))
    assert refused[0].check(Overloaded)
    for d in (underway, queued):
        d.addErrback(lambda f: None)
    reactor.advance(30)


def test_unreachable_backend_fails_fast() -> None:
    """When the only connection attempt failed, calls fail at once instead of waiting."""
    reactor = MemoryReactorClock()
    p = pool(reactor)
    p.start()
    _h, _p, factory, _t, _b = reactor.tcpClients.pop()
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError("refused")))
    out = collect(p.call(call(b"a"), timeout=30))
    assert out[0].check(BackendUnavailable) and "unreachable" in out[0].getErrorMessage()
    p.stop()


def test_calls_wait_for_the_first_connection() -> None:
    """A call made while the first connection is still being made is sent once it is up."""
    reactor = MemoryReactorClock()
    p = pool(reactor)
    p.start()
    out = collect(p.call(call(b"a"), timeout=30))
    ((proto, transport),) = connect_all(reactor)
    (seqid,) = sent_seqids(transport)
    proto.dataReceived(reply(b"ack:a", seqid))
    assert b"ack:a" in out[0]


# -- a silent backend host is noticed (real TCP sockets, no reactor) ---------------------------


class SocketTransport(StringTransport):
    """A StringTransport whose handle is a real connected TCP socket (for its options)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux TCP options")
def test_pool_connections_are_dropped_by_the_kernel_when_the_backend_host_falls_silent() -> None:
    """Each pool connection gets connect_timeout (at least 3 s) as TCP_USER_TIMEOUT
    (unacknowledged bytes abort it) and keepalive probes every third of it, so a partitioned
    backend makes its connections fail instead of holding calls until their timeouts for
    minutes, while a packet or two lost on a sub-second connect_timeout does not."""
    for connect_timeout, user_timeout, probe_every in ((7.5, 7500, 2), (0.5, 3000, 1)):
        reactor = MemoryReactorClock()
        pool(reactor, connect_timeout=connect_timeout).start()
        with socket.create_server(("127.0.0.1", 0)) as server:
            client = socket.create_connection(server.getsockname())
            with client, server.accept()[0]:
                ((_host, _port, factory, _timeout, _bind),) = reactor.tcpClients
                factory.buildProtocol(None).makeConnection(SocketTransport(client))
                tcp = socket.IPPROTO_TCP
                assert client.getsockopt(tcp, socket.TCP_USER_TIMEOUT) == user_timeout
                assert client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert client.getsockopt(tcp, socket.TCP_KEEPIDLE) == probe_every
                assert client.getsockopt(tcp, socket.TCP_KEEPINTVL) == probe_every
