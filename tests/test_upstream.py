"""UpstreamConnection and UpstreamPool in memory: seqid matching, timeouts, overload, loss."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from test_server_theader import frames_of
from test_thrift_theader import STOCK_IDS, stock_read
from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.Thrift import TMessageType, TType
from thrift.transport.THeaderTransport import THeaderClientType, THeaderTransport
from thrift.transport.TTransport import TMemoryBuffer
from thrift_messages import message, write_struct
from twisted.internet.defer import CancelledError, Deferred
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
    ShuttingDown,
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
COMPACT = ProtocolKind.COMPACT
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


def send(conn: UpstreamConnection, message: bytes, headers: Any = ()) -> Deferred[bytes]:
    """``transmit`` with a Deferred of the reply (failing with the GatewayError); cancelling
    it forgets the call."""
    d: Deferred[bytes] = Deferred(lambda _: conn.forget(seqid))

    def on_reply(result: bytes | Exception, _header: Any) -> None:
        if d.called:
            return
        if isinstance(result, bytes):
            d.callback(result)
        else:
            d.errback(result)

    seqid = conn.transmit(message, on_reply, headers=headers)
    return d


def collect(d: Any) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def test_each_call_gets_a_unique_upstream_seqid() -> None:
    """Calls sent with the same client seqid go upstream with distinct seqids."""
    conn, transport = connected()
    send(conn, call(b"a", seqid=5))
    send(conn, call(b"b", seqid=5))
    ids = sent_seqids(transport)
    assert len(set(ids)) == 2


def test_out_of_order_replies_are_matched_by_seqid() -> None:
    """A reply arriving before an earlier call's reply goes to its own caller."""
    conn, transport = connected()
    first = collect(send(conn, call(b"a")))
    second = collect(send(conn, call(b"b")))
    id_a, id_b = sent_seqids(transport)
    conn.dataReceived(reply(b"ack:b", id_b) + reply(b"ack:a", id_a))
    assert read_header(first[0], BINARY).seqid == id_a and b"ack:a" in first[0]
    assert read_header(second[0], BINARY).seqid == id_b and b"ack:b" in second[0]


def test_reply_for_a_cancelled_call_is_dropped() -> None:
    """A late reply whose caller gave up is ignored, and the connection stays usable."""
    conn, transport = connected()
    gone = send(conn, call(b"a"))
    gone.addErrback(lambda f: f.trap(CancelledError))
    gone.cancel()
    (id_a,) = sent_seqids(transport)
    conn.dataReceived(reply(b"ack:a", id_a))
    assert conn.outstanding == 0 and not transport.disconnecting


def test_connection_loss_fails_every_pending_call() -> None:
    """Losing the connection fails every outstanding call with BackendUnavailable."""
    conn, _ = connected()
    outs = [collect(send(conn, call(t))) for t in (b"a", b"b")]
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
    first = collect(send(conn, call(b"a")))
    second = collect(send(conn, call(b"b")))
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
    outs = [collect(send(conn, call(t))) for t in (b"a", b"b", b"c")]
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
    later = collect(send(conn, call(b"d")))
    (id_d,) = sent_seqids(transport)
    conn.dataReceived(reply(b"ack:d", id_d))
    assert b"ack:d" in later[0]


def test_oversized_buffered_reply_delivers_what_came_before_then_drops() -> None:
    """Unframed, a reply over max_frame_size cannot be skipped: replies ahead of it are
    delivered, its own call fails with ReplyTooLarge, the others once the connection drops."""
    conn, transport = connected(Limits(max_frame_size=200, max_string_size=10_000), BUFFERED)
    outs = [collect(send(conn, call(t))) for t in (b"a", b"b", b"c")]
    id_a, id_b, _ = sent_seqids(transport, BUFFERED)
    unframed = [r[4:] for r in (reply(b"ack:a", id_a), _big_reply(id_b, 5000))]
    conn.dataReceived(b"".join(unframed))
    assert b"ack:a" in outs[0][0]
    assert outs[1][0].check(ReplyTooLarge)
    assert transport.disconnecting and not outs[2]
    conn.connectionLost(Failure(ConnectionError("aborted")))
    assert outs[2][0].check(ConnectionLost)
    assert isinstance(outs[1][0].value, GatewayError)


# -- THeader backends (transport = "header") ---------------------------------------------------

HEADER = TransportKind.HEADER


def stock_reply(protocol: ProtocolKind, seqid: int, text: bytes, size: int = 0) -> bytes:
    """A REPLY as the stock Apache Thrift Python THeader server writes it (with an info header
    of its own, which the gateway ignores); ``size`` pads the result to that many bytes."""
    out = TMemoryBuffer()
    trans = THeaderTransport(out, [THeaderClientType.HEADERS], STOCK_IDS[protocol])
    trans.set_header(b"server", b"stock")
    prot = THeaderProtocol(trans, [THeaderClientType.HEADERS], STOCK_IDS[protocol])
    prot.writeMessageBegin("alertSupervisor", TMessageType.REPLY, seqid)
    write_struct(prot, [(0, TType.STRING, text + b"x" * size)])
    prot.writeMessageEnd()
    trans.flush()
    return bytes(out.getvalue())


@pytest.mark.parametrize("protocol", [BINARY, COMPACT])
def test_header_backend_gets_frames_the_stock_server_reads(protocol: ProtocolKind) -> None:
    """Calls to a THeader backend go in THeader frames of its protocol that the stock server
    reads, with the given info headers and frame seqid = message seqid (unique per
    connection); its THeader replies are matched back by seqid."""
    conn = UpstreamConnection(HEADER, protocol, DEFAULT_LIMITS)
    transport = StringTransport()
    conn.makeConnection(transport)
    calls = [
        message(protocol, "alertSupervisor", [(1, TType.STRING, t)], seqid=5) for t in (b"a", b"b")
    ]
    out_a = collect(send(conn, calls[0], headers=((b"trace", b"t-a"),)))
    out_b = collect(send(conn, calls[1]))
    sent = [stock_read(f, protocol) for f in frames_of(transport.value())]
    assert [g["headers"] for g in sent] == [{b"trace": b"t-a"}, {}]
    assert [g["seqid"] == g["frame_seqid"] for g in sent] == [True, True]
    id_a, id_b = (g["seqid"] for g in sent)
    assert id_a != id_b and sent[0]["body"] == [(1, TType.STRING, (TType.STRING, b"a"))]
    conn.dataReceived(stock_reply(protocol, id_b, b"ack:b") + stock_reply(protocol, id_a, b"ack:a"))
    assert b"ack:a" in out_a[0] and b"ack:b" in out_b[0]
    assert read_header(out_a[0], protocol).seqid == id_a


def test_oversized_header_reply_fails_only_its_own_call() -> None:
    """A THeader reply over max_frame_size fails its call alone (ReplyTooLarge); the reply
    after it is delivered and the connection stays."""
    limits = Limits(max_frame_size=300, max_string_size=10_000)
    conn = UpstreamConnection(HEADER, BINARY, limits)
    transport = StringTransport()
    conn.makeConnection(transport)
    outs = [collect(send(conn, call(t))) for t in (b"a", b"b")]
    id_a, id_b = (stock_read(f, BINARY)["seqid"] for f in frames_of(transport.value()))
    stream = stock_reply(BINARY, id_a, b"", size=5000) + stock_reply(BINARY, id_b, b"ack:b")
    for i in range(0, len(stream), 700):
        conn.dataReceived(stream[i : i + 700])
    assert outs[0][0].check(ReplyTooLarge)
    assert b"ack:b" in outs[1][0]
    assert not transport.disconnecting and conn.outstanding == 0


def test_header_pool_passes_info_headers_to_the_connection() -> None:
    """UpstreamPool.call(headers=...) on a THeader backend puts them in the call's frame."""
    reactor = MemoryReactorClock()
    p = UpstreamPool(
        reactor, "127.0.0.1", 9, transport=HEADER, protocol=BINARY, limits=DEFAULT_LIMITS,
        connections=1,
    )  # fmt: skip
    p.start()
    [(_, transport)] = connect_all(reactor)
    p.call(call(b"m"), timeout=5, headers=((b"tenant", b"t1"),))
    (sent,) = [stock_read(f, BINARY) for f in frames_of(transport.value())]
    assert sent["headers"] == {b"tenant": b"t1"}
    p.stop()


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


def test_long_queue_fails_without_recursion_when_the_backend_is_unreachable() -> None:
    """Calls queued behind max_concurrency while the first connection attempt runs all fail
    with BackendUnavailable once it fails, however many there are, and the pool is left
    with nothing underway or waiting (each failure starting the next must not nest)."""
    reactor = MemoryReactorClock()
    p = pool(reactor, max_concurrency=64, queue_size=5000)
    p.start()
    outs = [collect(p.call(call(b"%d" % i), timeout=30)) for i in range(3000)]
    while reactor.tcpClients:  # every connect the pool has in flight fails
        _h, _p, factory, _t, _b = reactor.tcpClients.pop()
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError("refused")))
    assert all(len(out) == 1 and out[0].check(BackendUnavailable) for out in outs)
    assert (p._underway, p._waiting) == (0, 0)
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


def test_waiting_calls_start_in_order_as_slots_free() -> None:
    """Beyond max_concurrency calls wait; each one that finishes starts the oldest waiting."""
    reactor = MemoryReactorClock()
    p = pool(reactor, queue_size=5)
    p.start()
    ((proto, transport),) = connect_all(reactor)
    outs = [collect(p.call(call(t), timeout=30)) for t in (b"a", b"b", b"c")]
    assert len(sent_seqids(transport)) == 1  # one slot: the others wait
    for text in (b"a", b"b", b"c"):
        seqid = sent_seqids(transport)[-1]
        proto.dataReceived(reply(b"ack:" + text, seqid))
    assert all(b"ack:" + t in o[0] for o, t in zip(outs, (b"a", b"b", b"c"), strict=True))


def test_cancelled_waiting_call_is_never_sent_and_frees_its_place() -> None:
    """A waiting call whose caller left is skipped, and its queue place is free at once."""
    reactor = MemoryReactorClock()
    p = pool(reactor, queue_size=1)
    p.start()
    ((proto, transport),) = connect_all(reactor)
    first = collect(p.call(call(b"a"), timeout=30))
    gone = p.call(call(b"b"), timeout=30)
    gone.addErrback(lambda f: f.trap(CancelledError))
    gone.cancel()
    third = collect(p.call(call(b"c"), timeout=30))  # the queue had room again
    assert third == []
    proto.dataReceived(reply(b"ack:a", sent_seqids(transport)[0]))
    assert b"ack:a" in first[0]
    sent = MessageReader(FRAMED, BINARY, DEFAULT_LIMITS).feed(transport.value())
    assert [b"c" in m for m in sent] == [False, True]  # b was never sent
    proto.dataReceived(reply(b"ack:c", sent_seqids(transport)[1]))
    assert b"ack:c" in third[0]


def test_waiting_call_times_out_without_a_slot() -> None:
    """A call still waiting at its timeout fails with BackendTimeout and is never sent."""
    reactor = MemoryReactorClock()
    p = pool(reactor)
    p.start()
    ((_proto, transport),) = connect_all(reactor)
    underway = p.call(call(b"a"), timeout=30)
    waiting = collect(p.call(call(b"b"), timeout=1))
    reactor.advance(1.1)
    assert waiting[0].check(BackendTimeout)
    assert len(sent_seqids(transport)) == 1
    underway.addErrback(lambda f: None)
    p.stop()


def test_caller_leaving_an_underway_call_frees_its_slot_and_drops_the_late_reply() -> None:
    """Pipelined: cancelling an underway call frees its slot for the next one; its reply is
    ignored."""
    reactor = MemoryReactorClock()
    p = pool(reactor, pipelining=True)
    p.start()
    ((proto, transport),) = connect_all(reactor)
    gone = p.call(call(b"a"), timeout=30)
    gone.addErrback(lambda f: f.trap(CancelledError))
    nxt = collect(p.call(call(b"b"), timeout=30))
    gone.cancel()
    first, second = sent_seqids(transport)
    proto.dataReceived(reply(b"ack:a", first) + reply(b"ack:b", second))
    assert len(nxt) == 1 and b"ack:b" in nxt[0]


def test_stop_fails_calls_not_yet_sent_with_shutting_down() -> None:
    """stop(): waiting calls fail with ShuttingDown at once."""
    reactor = MemoryReactorClock()
    p = pool(reactor)
    p.start()
    connect_all(reactor)
    underway = p.call(call(b"a"), timeout=30)
    underway.addErrback(lambda f: None)
    waiting = collect(p.call(call(b"b"), timeout=30))
    p.stop()
    assert waiting[0].check(ShuttingDown)


def test_submit_answers_exactly_once() -> None:
    """submit(): on_reply runs once with the reply and its parsed header, on_end once."""
    reactor = MemoryReactorClock()
    p = pool(reactor)
    p.start()
    ((proto, transport),) = connect_all(reactor)
    got: list[Any] = []
    ended: list[bool] = []
    p.submit(
        call(b"a"), lambda r, h: got.append((r, h)), timeout=1, on_end=lambda: ended.append(True)
    )
    proto.dataReceived(reply(b"ack:a", sent_seqids(transport)[0]))
    reactor.advance(5)  # the timeout does not fire after the answer
    [(message, header)] = got
    assert b"ack:a" in message and header == read_header(message, BINARY)
    assert ended == [True]


# -- a silent backend host is noticed (real TCP sockets, no reactor) ---------------------------


class SocketTransport(StringTransport):
    """A StringTransport whose handle is a real connected TCP socket (for its options)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux TCP options")
def test_pool_connections_carry_user_timeout_and_keepalive_for_a_silent_host() -> None:
    """(The kernel dropping them is tests/test_netns.py's backend-partition scenario.)
    Each pool connection gets connect_timeout (at least 3 s) as TCP_USER_TIMEOUT
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
