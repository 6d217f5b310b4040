"""A small pipelining framed Thrift client for Twisted, used by the herd load driver.

Calls are encoded with the generated ``*_args`` structs (:mod:`clients.calls`), written as
4-byte-length frames, and many may be in flight on one connection at once.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, cast

from thrift.transport import TTransport
from twisted.internet import defer, error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from clients.calls import Method, check_name, encode_call, read_result
from clients.calls import protocol_factory as make_protocol_factory


class PipelinedConnection(Int32StringReceiver):
    """One framed connection carrying many calls at once; replies are matched by seqid.

    Not TTwisted's ThriftClientProtocol: a reply whose seqid it does not know raises KeyError
    inside ``stringReceived`` and drops the connection, and timed-out calls stay in its table
    until their reply comes. A load driver for a proxy must instead *see* a reply that matches
    no call, so here timed-out calls are forgotten, their late replies ignored, and replies
    that match no call ever made are counted as ``stray_replies``.
    """

    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self, clock: Any, protocol: str, multiplexed: bool) -> None:
        self._clock = clock
        self._factory = make_protocol_factory(protocol)
        self._multiplexed = multiplexed
        self._pending: dict[int, tuple[Method, defer.Deferred[Any]]] = {}
        self._seqid = 0
        self._forgotten: set[int] = set()
        self.stray_replies = 0
        self.is_open = False
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.is_open = True

    def call(self, method: Method, timeout: float, **fields: Any) -> defer.Deferred[Any]:
        """Send one call; fires with its result, or fails with the declared exception,
        ``TApplicationException``, ``defer.TimeoutError`` or ``ConnectionLost``."""
        if not self.is_open:  # writes would vanish and the call would wait for its timeout
            return defer.fail(error.ConnectionLost("connection already closed"))
        self._seqid = seqid = (self._seqid + 1) & 0x7FFFFFFF

        def forget(_: defer.Deferred[Any]) -> None:
            # Cancelled (by the timeout): a late reply must find nothing to fire.
            if self._pending.pop(seqid, None) is not None:
                self._forgotten.add(seqid)

        d: defer.Deferred[Any] = defer.Deferred(forget)
        self._pending[seqid] = (method, d)
        message = encode_call(self._factory, method, seqid, multiplexed=self._multiplexed, **fields)
        self._transport().write(struct.pack("!i", len(message)) + message)
        return d.addTimeout(timeout, self._clock)

    def close(self) -> None:
        """Hang up; pending calls fail with ``ConnectionLost`` and ``lost`` fires."""
        self._transport().loseConnection()

    def _transport(self) -> Any:
        # Any: zope interface methods lack ``self``, which mypy misreads without mypy-zope.
        return self.transport

    def stringReceived(self, string: bytes) -> None:
        try:
            iprot = self._factory.getProtocol(TTransport.TMemoryBuffer(string))
            name, mtype, seqid = iprot.readMessageBegin()
        except Exception:  # an undecodable header: no call to blame, so hang up
            self._transport().loseConnection()
            return
        entry = self._pending.pop(seqid, None)
        if entry is None:
            if seqid in self._forgotten:
                self._forgotten.discard(seqid)  # timed out before its reply arrived
            else:
                self.stray_replies += 1
            return
        method, d = entry
        try:
            check_name(name, method)
            result = read_result(iprot, method, mtype)
        except Exception as exc:
            d.errback(exc)
        else:
            d.callback(result)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.is_open = False
        pending, self._pending = self._pending, {}
        for _, d in pending.values():
            d.errback(reason)  # ConnectionDone or ConnectionLost, with its own message
        self.lost.callback(None)


def connect(
    reactor: Any, host: str, port: int, protocol: str, multiplexed: bool, timeout: float
) -> defer.Deferred[PipelinedConnection]:
    """Open one :class:`PipelinedConnection`; fails with the connect error."""
    # IP literals skip HostnameEndpoint's resolver, whose thread pool would serialise
    # hundreds of simultaneous connects.
    endpoint: Any
    if isIPAddress(host):
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    elif isIPv6Address(host):
        endpoint = cast(Any, TCP6ClientEndpoint)(reactor, host, port, timeout=timeout)
    else:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    proto = PipelinedConnection(reactor, protocol, multiplexed)
    connecting: defer.Deferred[PipelinedConnection] = cast(Any, connectProtocol)(endpoint, proto)
    return connecting


@defer.inlineCallbacks
def close_all(reactor: Any, conns: Iterable[PipelinedConnection | None], wait: float = 5.0) -> Any:
    """Hang up every open connection and wait (at most ``wait`` seconds) until they are gone."""
    open_conns = [c for c in conns if c is not None and c.is_open]
    for conn in open_conns:
        conn.close()
    if open_conns:
        lost = defer.DeferredList([c.lost for c in open_conns])
        yield lost.addTimeout(wait, reactor).addErrback(lambda _: None)
