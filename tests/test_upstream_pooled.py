"""UpstreamPool with one call per connection, on a memory reactor: growth, idle close,
connects in flight, fair share between clients, overflow, and the bound on unsent bytes."""

from __future__ import annotations

from typing import Any

import pytest
from test_upstream import call, collect, connect_all, reply, sent_seqids
from twisted.internet.defer import CancelledError
from twisted.internet.testing import MemoryReactorClock, StringTransport

from gateway.errors import Overloaded
from gateway.proxy.fairness import client_scope
from gateway.proxy.upstream import MAX_UNSENT, UpstreamPool
from gateway.stats import NodeStats
from gateway.thrift import DEFAULT_LIMITS, ProtocolKind, TransportKind

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")


def pool(reactor: MemoryReactorClock, **kw: Any) -> UpstreamPool:
    # client_share 1: these calls come from no client connection; the share has its test.
    options: dict[str, Any] = {
        "connections": 1,
        "max_concurrency": 8,
        "queue_size": 16,
        "client_share": 1.0,
    }
    options.update(kw)
    return UpstreamPool(
        reactor,
        "127.0.0.1",
        9,
        transport=TransportKind.FRAMED,
        protocol=ProtocolKind.BINARY,
        limits=DEFAULT_LIMITS,
        **options,
    )


def answer(proto: Any, transport: StringTransport, text: bytes = b"ok") -> None:
    """Answer the last call sent on this connection."""
    proto.dataReceived(reply(text, sent_seqids(transport)[-1]))


def test_concurrent_calls_each_get_a_connection_of_their_own() -> None:
    """Two calls at once go on two connections, one each: the second is opened on demand."""
    reactor = MemoryReactorClock()
    p = pool(reactor)
    p.start()
    [(proto_a, tr_a)] = connect_all(reactor)
    first = collect(p.call(call(b"a"), timeout=30))
    second = collect(p.call(call(b"b"), timeout=30))
    assert len(sent_seqids(tr_a)) == 1  # b did not go behind a
    [(proto_b, tr_b)] = connect_all(reactor)
    assert len(sent_seqids(tr_b)) == 1
    answer(proto_b, tr_b, b"ack:b")
    assert b"ack:b" in second[0] and first == []
    answer(proto_a, tr_a, b"ack:a")
    assert b"ack:a" in first[0]
    p.stop()


def test_a_freed_connection_is_reused_before_a_new_one_is_opened() -> None:
    """Sequential calls share one connection: no connect per call."""
    reactor = MemoryReactorClock()
    p = pool(reactor)
    p.start()
    [(proto, transport)] = connect_all(reactor)
    for text in (b"a", b"b", b"c"):
        out = collect(p.call(call(text), timeout=30))
        answer(proto, transport, b"ack:" + text)
        assert b"ack:" + text in out[0]
    assert reactor.tcpClients == [] and len(sent_seqids(transport)) == 3
    p.stop()


def test_connections_beyond_the_warm_ones_close_after_idle_timeout() -> None:
    """Connections opened for a peak close once idle for idle_timeout; the warm ones stay."""
    reactor = MemoryReactorClock()
    stats = NodeStats()
    p = pool(reactor, idle_timeout=10.0, stats=stats)
    p.start()
    conns = connect_all(reactor)
    outs = [collect(p.call(call(b"%d" % i), timeout=30)) for i in range(3)]
    conns += connect_all(reactor)
    assert len(conns) == 3 and stats.backend_connections == 3
    for proto, transport in conns:
        answer(proto, transport)
    assert all(len(out) == 1 for out in outs) and stats.backend_connections_idle == 3
    reactor.advance(9.9)
    assert stats.backend_connections == 3
    reactor.advance(0.2)
    assert stats.backend_connections == 1 and stats.backend_idle_closed == 2
    assert sum(t.disconnecting for _, t in conns) == 2
    p.stop()


def test_connects_in_flight_are_capped() -> None:
    """However many calls wait for a connection, at most max_connecting connects run at once."""
    reactor = MemoryReactorClock()
    stats = NodeStats()
    p = pool(reactor, max_concurrency=64, max_connecting=3, client_share=1.0, stats=stats)
    p.start()
    outs = [p.call(call(b"%d" % i), timeout=30) for i in range(20)]
    assert len(reactor.tcpClients) == 3 and stats.backend_connecting == 3
    first_three, reactor.tcpClients[:] = list(reactor.tcpClients), []
    for _host, _port, factory, _timeout, _bind in first_three:
        factory.buildProtocol(None).makeConnection(StringTransport())
    # Each connection made takes a call and lets one more connect start, never more.
    assert stats.backend_connections == 3 and stats.backend_connecting == 3
    assert len(reactor.tcpClients) == 3
    for d in outs:
        d.addErrback(lambda f: None)
    p.stop()


def test_a_timed_out_call_closes_its_connection() -> None:
    """The backend would answer a timed-out call on its connection ahead of the next call's
    reply, so that connection is closed and the next call gets another."""
    reactor = MemoryReactorClock()
    p = pool(reactor)
    p.start()
    [(_proto, transport)] = connect_all(reactor)
    collect(p.call(call(b"a"), timeout=1))
    reactor.advance(1.1)
    assert transport.disconnecting
    out = collect(p.call(call(b"b"), timeout=30))
    [(proto_b, tr_b)] = connect_all(reactor)
    answer(proto_b, tr_b, b"ack:b")
    assert b"ack:b" in out[0]
    p.stop()


def test_a_cancelled_call_closes_its_connection() -> None:
    """A call whose caller left closes its connection too (its reply would still come)."""
    reactor = MemoryReactorClock()
    p = pool(reactor)
    p.start()
    [(_proto, transport)] = connect_all(reactor)
    gone = p.call(call(b"a"), timeout=30)
    gone.addErrback(lambda f: f.trap(CancelledError))
    gone.cancel()
    assert transport.disconnecting
    p.stop()


def test_waiting_calls_are_served_round_robin_across_clients() -> None:
    """A burst queued by one client does not go ahead of a later client's call: slots go to
    clients in turn."""
    reactor = MemoryReactorClock()
    p = pool(reactor, max_concurrency=1, client_share=1.0, queue_size=100)
    p.start()
    [(proto, transport)] = connect_all(reactor)
    order: list[str] = []
    burst, other = object(), object()
    with client_scope(burst):
        for i in range(5):
            p.call(call(b"burst%d" % i), timeout=30).addCallback(
                lambda _, i=i: order.append(f"b{i}")
            )
    with client_scope(other):
        p.call(call(b"other"), timeout=30).addCallback(lambda _: order.append("other"))
    for _ in range(6):
        answer(proto, transport)
    assert order[:3] == ["b0", "b1", "other"]
    p.stop()


def test_one_client_holds_at_most_its_share_of_the_slots() -> None:
    """With client_share 0.5 of 4 slots, a client's third concurrent call waits while
    another client's call starts at once."""
    reactor = MemoryReactorClock()
    p = pool(reactor, max_concurrency=4, client_share=0.5, connections=4)
    p.start()
    conns = connect_all(reactor)
    heavy, light = object(), object()
    with client_scope(heavy):
        for i in range(3):
            p.call(call(b"h%d" % i), timeout=30).addErrback(lambda f: None)
    sent = [len(sent_seqids(t)) for _, t in conns]
    assert sum(sent) == 2
    with client_scope(light):
        p.call(call(b"l"), timeout=30).addErrback(lambda f: None)
    assert sum(len(sent_seqids(t)) for _, t in conns) == 3
    p.stop()


def test_a_full_queue_refuses_the_heaviest_client_first() -> None:
    """When the queue is full, a light client's call takes the place of the heaviest
    client's newest waiting call, which fails with Overloaded; the heaviest client's own
    next call is refused at once."""
    reactor = MemoryReactorClock()
    stats = NodeStats()
    p = pool(reactor, max_concurrency=1, queue_size=3, client_share=1.0, stats=stats)
    p.start()
    connect_all(reactor)
    heavy, light = object(), object()
    with client_scope(heavy):
        heavy_outs = [collect(p.call(call(b"h%d" % i), timeout=30)) for i in range(4)]
    with client_scope(light):
        light_out = collect(p.call(call(b"l"), timeout=30))
    assert light_out == []
    assert heavy_outs[3][0].check(Overloaded) and "most calls" in heavy_outs[3][0].getErrorMessage()
    assert stats.backend_calls_shed == 1
    with client_scope(heavy):
        refused = collect(p.call(call(b"h4"), timeout=30))
    assert refused[0].check(Overloaded)
    for out in heavy_outs[:3]:
        assert out == []
    reactor.advance(31)
    p.stop()


def test_pipelined_connection_of_a_backend_that_does_not_read_gets_no_more_calls() -> None:
    """Pipelined: once MAX_UNSENT bytes wait for the backend (the transport pauses its
    producer), new calls wait in the bounded queue instead of piling up in its buffer,
    and go out once it reads again."""
    reactor = MemoryReactorClock()
    p = pool(reactor, pipelining=True, max_concurrency=64)
    p.start()
    [(_proto, transport)] = connect_all(reactor)
    conn = transport.producer  # the connection registered itself
    assert conn is not None and MAX_UNSENT >= 1 << 16
    p.call(call(b"a"), timeout=30).addErrback(lambda f: None)
    conn.pauseProducing()  # what Twisted does past bufferSize unsent bytes
    later = p.call(call(b"b"), timeout=30)
    later.addErrback(lambda f: None)
    assert len(sent_seqids(transport)) == 1
    conn.resumeProducing()
    assert len(sent_seqids(transport)) == 2
    p.stop()
