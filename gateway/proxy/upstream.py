"""The one module that owns backend connections: a pool per backend address.

**One call per connection** (the default): most Thrift servers (Apache's ``TThreadedServer``,
``TThreadPoolServer``, ``TNonblockingServer``, thriftpy2's) answer one connection's calls one
at a time, in order, so a call pipelined behind a slow one waits for it. The pool therefore
gives each call a connection of its own: a free one if there is one (the most recently used,
so that the rest go idle), otherwise a new one, opened on demand up to ``max_concurrency``.
``connections`` of them are kept open while idle (warm, and reopened with backoff when
lost); the others are closed once idle for ``idle_timeout``. At most ``max_connecting``
connects are in flight at once, so a restarted backend is not hit by a connect storm. A call
that times out or whose caller leaves closes its connection: the backend would otherwise
answer it on that connection later, ahead of the next call's reply.

**Pipelining** (``pipelining=True``, for servers known to read ahead and answer concurrently):
``connections`` persistent connections each carry many calls at once; every outgoing seqid is
rewritten to one unique on its connection and replies are matched **by seqid only**, so a
backend answering out of order (TTwisted, THeader/fbthrift-style servers) is supported. Against
an in-order server, a slow call delays every call sent behind it on its connection.

Fairness (see :mod:`gateway.proxy.fairness`): at most ``max_concurrency`` calls are underway,
at most ``client_share`` of those slots held by one client connection; the rest wait, up to
``queue_size``, served round-robin across client connections. When the queue is full the
client with the most calls waiting or underway is refused first (``Overloaded``).

Framing is the backend's ``transport``: framed, buffered, or THeader (``header``): each call
then goes in a THeader frame of the backend's protocol carrying the info headers the handler
passes (the leader's). A reply over ``max_frame_size`` fails only its own call
(:class:`ReplyTooLarge`) on a framed or THeader connection; an unframed one is dropped (see
:class:`~gateway.proxy.upstream_conn.UpstreamConnection`).

Calls are driven by callbacks (:meth:`UpstreamPool.submit`): a call costs no Deferred unless
its caller wants one (:meth:`UpstreamPool.call`), and every call's timeout shares one timer
(``Deadlines``). While no connection is up and the last connect failed, calls fail fast with
:class:`BackendUnreachable` while reconnecting goes on in the background with exponential
backoff. A silent backend host is given ``connect_timeout`` (at least 3 s) to acknowledge
bytes, as a new connection would be (:func:`~gateway.proxy.silence.drop_when_silent`).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.python.failure import Failure

from gateway.errors import (
    BackendTimeout,
    BackendUnreachable,
    GatewayError,
    Overloaded,
    ShuttingDown,
)
from gateway.primitives import Deadline, Deadlines, exponential_backoff
from gateway.proxy.connections import RateLimitedLog
from gateway.proxy.fairness import FairQueue, current_client
from gateway.proxy.tls_upstream import backend_endpoint
from gateway.proxy.upstream_conn import MAX_UNSENT, OnReply, UpstreamConnection
from gateway.reactors import DelayedCall, as_clock, as_transport
from gateway.stats import NodeStats
from gateway.thrift import Headers, Limits, MessageHeader, ProtocolKind, TransportKind

__all__ = ["MAX_UNSENT", "Call", "OnReply", "UpstreamConnection", "UpstreamPool"]

log = logging.getLogger("gateway.upstream")

_WAITING, _UNDERWAY, _DONE = "waiting", "underway", "done"


class Call:
    """One call of an :class:`UpstreamPool`: waiting for a slot, underway, or done."""

    __slots__ = (
        "client",
        "conn",
        "deadline",
        "header",
        "headers",
        "message",
        "on_end",
        "on_reply",
        "oneway",
        "pool",
        "seqid",
        "state",
        "timeout",
    )

    def __init__(
        self,
        pool: UpstreamPool,
        message: bytes,
        on_reply: OnReply,
        oneway: bool,
        header: MessageHeader | None,
        headers: Headers,
        timeout: float,
        on_end: Callable[[], None] | None,
        client: Hashable | None = None,
    ) -> None:
        self.pool = pool
        self.client = client
        self.on_end = on_end
        self.message = message
        self.on_reply = on_reply
        self.oneway = oneway
        self.header = header
        self.headers = headers
        self.timeout = timeout
        self.state = _WAITING
        self.conn: UpstreamConnection | None = None
        self.seqid = 0
        self.deadline: Deadline | None = None

    def reply(self, result: bytes | GatewayError, header: MessageHeader | None = None) -> None:
        """From the connection: the reply (with its header), or what ended the call."""
        self.pool._finish(self, result, header)

    def expire(self) -> None:
        """From the pool's deadlines: ``timeout`` has passed."""
        self.pool._expire(self)

    def cancel(self) -> None:
        """The caller is gone: forget the call (a late reply is dropped), answer nobody."""
        self.pool._drop(self)

    @property
    def done(self) -> bool:
        return self.state is _DONE


class UpstreamPool:
    """Connections to one backend address: one call each, or pipelined; a fair, capped queue."""

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        *,
        transport: TransportKind,
        protocol: ProtocolKind,
        limits: Limits,
        connections: int = 4,
        connect_timeout: float = 5.0,
        max_concurrency: int = 64,
        queue_size: int = 1024,
        backoff: Callable[[], Iterator[float]] | None = None,
        pipelining: bool = False,
        idle_timeout: float = 60.0,
        max_connecting: int = 8,
        client_share: float = 0.25,
        stats: NodeStats | None = None,
        tls: Any = None,
    ) -> None:
        """``tls``: a pyOpenSSL client connection creator (gateway.proxy.tls_upstream), or
        None for plain TCP."""
        self.address = f"{host}:{port}"
        self.protocol = protocol
        self.pipelining = pipelining
        self._reactor = reactor
        self._clock = as_clock(reactor)
        self._endpoint = backend_endpoint(reactor, host, port, connect_timeout, tls)
        self._connect_timeout = connect_timeout
        self._transport_kind = transport
        self._limits = limits
        self._stats = stats if stats is not None else NodeStats()
        # Pooled: kept open while idle; pipelined: the connections there are.
        self._warm = connections if pipelining else min(connections, max_concurrency)
        self._idle_timeout = idle_timeout
        self._max_connecting = max_connecting
        self._backoff = backoff or (lambda: exponential_backoff(0.05, 2.0, 2.0))
        self._delays: Iterator[float] | None = None  # the backoff under way after failures
        self._retry: DelayedCall | None = None  # the next connect after a failure
        self._sweep: DelayedCall | None = None  # the next close of idle connections
        self._live: list[UpstreamConnection] = []  # connected, not closing
        self._idle: list[UpstreamConnection] = []  # pooled: free, most recently freed last
        self._attempts: list[Deferred[UpstreamConnection]] = []  # connects in flight
        self._down = False  # the last connect failed and nothing is up: fail fast
        # Why the last connect failed, when it says more than "unreachable" (a TLS
        # handshake that failed): calls failing fast meanwhile get it.
        self._down_error: GatewayError | None = None
        self._next = 0
        self._started = self._stopped = False
        self._oversized_log = RateLimitedLog(reactor, logger=log)
        # One timer for every call's timeout (see gateway.primitives.deadlines).
        self._deadlines = Deadlines(reactor, resolution=0.05)
        # At most ``max_concurrency`` calls underway, at most ``share`` of them one client's,
        # ``queue_size`` waiting; ``_held`` counts each client's calls underway.
        self._width = max_concurrency
        self._share = max(1, math.ceil(max_concurrency * client_share))
        self._capacity = queue_size
        self._underway = 0
        self._held: dict[Hashable | None, int] = {}
        self._queue: FairQueue[Call] = FairQueue(lambda call: call.state is _WAITING)
        self._starting = False  # _start_waiting is running (see there)
        # Given a slot, waiting for a connection: being opened (or, pipelined, resumed).
        self._parked: deque[Call] = deque()

    @property
    def _waiting(self) -> int:
        return len(self._queue)

    # -- connections ------------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        self._replenish()

    def _replenish(self) -> None:
        """Open connections while fewer than the warm ones (or, pooled, than the calls
        parked for one) are up or opening, within ``max_connecting``; not during a backoff."""
        if self._stopped or not self._started or self._retry is not None:
            return
        live, opening = len(self._live), len(self._attempts)
        want = self._warm
        if not self.pipelining:
            want = min(self._width, max(want, live + len(self._parked)))
        while live + opening < want and opening < self._max_connecting:
            self._open()
            opening += 1

    def _open(self) -> None:
        conn = UpstreamConnection(
            self._transport_kind,
            self.protocol,
            self._limits,
            self._oversized_log,
            silence_timeout=self._connect_timeout,
        )
        d: Deferred[UpstreamConnection] = connectProtocol(  # type: ignore[no-untyped-call]  # untyped in Twisted
            self._endpoint, conn
        )
        self._attempts.append(d)
        self._stats.backend_connecting += 1

        def settled(result: object) -> object:
            self._attempts.remove(d)
            self._stats.backend_connecting -= 1
            return result

        d.addBoth(settled)
        d.addCallbacks(self._opened, self._open_failed)

    def _opened(self, conn: UpstreamConnection) -> None:
        if self._stopped:
            conn.close()
            return
        self._stats.backend_connects += 1
        self._delays = None
        self._down_error = None
        if self._down:
            self._down = False
            log.info("backend %s reachable again", self.address)
        self._live.append(conn)
        self._stats.backend_connections += 1
        conn.on_resume = self._resumed
        conn.lost.addCallback(lambda _: self._lost(conn))
        self._available(conn)
        self._replenish()

    def _open_failed(self, reason: Failure) -> None:
        if self._stopped or isinstance(reason.value, CancelledError):
            return
        self._stats.backend_connect_failures += 1
        self._down_error = reason.value if isinstance(reason.value, GatewayError) else None
        if self._delays is None:
            self._delays = self._backoff()
        delay = next(self._delays, 2.0)
        if self._retry is None:
            self._retry = self._clock.callLater(delay, self._retry_now)
        if self._live or self._attempts:
            return  # busy connections will free up, or another attempt may still succeed
        if not self._down:
            log.warning("backend %s unreachable: %s", self.address, reason.getErrorMessage())
        self._down = True
        # Fail fast rather than wait out the backoff; reconnecting goes on in the background.
        self._fail_parked()

    def _retry_now(self) -> None:
        self._retry = None
        self._replenish()

    def _fail_parked(self) -> None:
        parked, self._parked = self._parked, deque()
        for call in parked:
            if call.state is _UNDERWAY:
                self._finish(call, self._unreachable())

    def _unreachable(self) -> GatewayError:
        return self._down_error or BackendUnreachable(
            f"gateway: backend {self.address} unreachable"
        )

    def _lost(self, conn: UpstreamConnection) -> None:
        self._forget_conn(conn)
        if not self._stopped:
            self._replenish()

    def _forget_conn(self, conn: UpstreamConnection) -> None:
        if conn in self._live:
            self._live.remove(conn)
            self._stats.backend_connections -= 1
        if conn in self._idle:
            self._idle.remove(conn)
            self._stats.backend_connections_idle -= 1

    def _give_up(self, conn: UpstreamConnection) -> None:
        """Close ``conn`` now and stop counting it (a timed-out call's, an idle one)."""
        self._forget_conn(conn)
        conn.close()

    def _available(self, conn: UpstreamConnection) -> None:
        """``conn`` can take a call: give it to a call parked for one, or keep it idle."""
        if self.pipelining:
            self._send_parked()
            return
        while self._parked:
            call = self._parked.popleft()
            if call.state is _UNDERWAY:
                self._transmit(conn, call)
                return
        conn.idle_since = self._clock.seconds()
        self._idle.append(conn)
        self._stats.backend_connections_idle += 1
        if self._sweep is None and len(self._live) > self._warm:
            self._sweep = self._clock.callLater(self._idle_timeout, self._close_idle)

    def _resumed(self, conn: UpstreamConnection) -> None:
        if self.pipelining and conn.usable:
            self._send_parked()

    def _send_parked(self) -> None:
        while self._parked:
            conn = self._pick_pipelined()
            if conn is None:
                return
            call = self._parked.popleft()
            if call.state is _UNDERWAY:
                self._transmit(conn, call)

    def _close_idle(self) -> None:
        """Close the connections idle for ``idle_timeout`` beyond the warm ones, oldest
        first; come back for those that will be."""
        self._sweep = None
        now = self._clock.seconds()
        excess = len(self._live) - self._warm
        for conn in list(self._idle):  # oldest idle first
            if excess <= 0:
                return
            if now - conn.idle_since < self._idle_timeout:
                left = conn.idle_since + self._idle_timeout - now
                self._sweep = self._clock.callLater(left, self._close_idle)
                return
            self._give_up(conn)
            self._stats.backend_idle_closed += 1
            excess -= 1

    def _acquire(self) -> UpstreamConnection | None:
        """A connection that can take a call now, None if none can."""
        if self.pipelining:
            return self._pick_pipelined()
        idle = self._idle
        while idle:
            conn = idle.pop()
            self._stats.backend_connections_idle -= 1
            if conn.usable:
                return conn
        return None

    def _pick_pipelined(self) -> UpstreamConnection | None:
        """The usable connection with the fewest outstanding calls, None if none is."""
        live = self._live
        n = len(live)
        # Least outstanding calls first; ties rotate so load spreads over connections. (A
        # plain loop, without a generator and a key lambda per call.)
        self._next += 1
        start = self._next
        best: UpstreamConnection | None = None
        least = 0
        for i in range(n):
            conn = live[(start + i) % n]
            if conn.usable and (best is None or conn.outstanding < least):
                best, least = conn, conn.outstanding
        return best

    # -- calls ------------------------------------------------------------------------------

    def submit(
        self,
        message: bytes,
        on_reply: OnReply,
        *,
        timeout: float,
        oneway: bool = False,
        header: MessageHeader | None = None,
        headers: Headers = (),
        on_end: Callable[[], None] | None = None,
        client: Hashable | None = None,
    ) -> Call | None:
        """Send one unframed message (any seqid); ``on_reply`` gets the reply or the failure.

        ``on_reply`` is called exactly once - with the backend's reply message, or with a
        GatewayError (BackendUnreachable, ConnectionLost, BackendTimeout, Overloaded,
        ShuttingDown, ReplyTooLarge) - unless the returned :class:`Call` is cancelled first
        (the caller is gone). A oneway call gets ``b""`` once it is sent. When the call
        fails at once, ``on_reply`` has run already and None is returned. ``timeout`` counts
        from now and includes time spent waiting for a slot. ``header``, if given, must be
        ``read_header(message, self.protocol)``; ``headers`` go in the THeader frame
        (THeader backends only). ``on_end`` runs once the call is over, however it ended.
        ``client``: the client connection it is for (its fair share; None: unattributed).
        """
        if self._stopped:
            _immediately(on_reply, ShuttingDown("gateway: shutting down"), on_end)
            return None
        call = Call(self, message, on_reply, oneway, header, headers, timeout, on_end, client)
        if self._underway < self._width and self._held.get(client, 0) < self._share:
            self._start(call)
            if call.done:
                return None
        else:
            queue = self._queue
            if len(queue) >= self._capacity:
                heaviest = queue.heaviest() if len(queue) else None
                if heaviest is None or self._weight(client) + 1 >= self._weight(heaviest):
                    overloaded = Overloaded(
                        f"gateway: overloaded, backend {self.address} queue full"
                    )
                    _immediately(on_reply, overloaded, on_end)
                    return None
                # The heaviest client gives up its newest waiting call for this one.
                evicted = queue.pop_newest(heaviest)
                self._stats.backend_calls_shed += 1
                self._refuse(
                    evicted,
                    Overloaded(
                        f"gateway: overloaded, backend {self.address} queue full "
                        "(this client has the most calls waiting)"
                    ),
                )
            queue.push(client, call)
        call.deadline = self._deadlines.add(timeout, call.expire)
        return call

    def _weight(self, client: Hashable | None) -> int:
        return self._queue.waiting(client) + self._held.get(client, 0)

    def call(
        self,
        message: bytes,
        *,
        timeout: float,
        oneway: bool = False,
        header: MessageHeader | None = None,
        headers: Headers = (),
        client: Hashable | None = None,
    ) -> Deferred[bytes]:
        """:meth:`submit` with a Deferred: it fires with the reply, fails with the
        GatewayError, and cancelling it cancels the call. ``client`` defaults to the
        caller's scope (:func:`~gateway.proxy.fairness.current_client`)."""
        d: Deferred[bytes] = Deferred(lambda _: call.cancel() if call is not None else None)
        call = self.submit(
            message,
            _settle(d),
            timeout=timeout,
            oneway=oneway,
            header=header,
            headers=headers,
            client=client if client is not None else current_client(),
        )
        return d

    def _start(self, call: Call) -> None:
        self._underway += 1
        self._held[call.client] = self._held.get(call.client, 0) + 1
        call.state = _UNDERWAY
        conn = self._acquire()
        if conn is not None:
            self._transmit(conn, call)
            return
        if self._down and not self._live:
            self._finish(call, self._unreachable())
            return
        self._parked.append(call)
        self._replenish()
        if not self._live and not self._attempts and self._retry is None:
            # Not started, or nothing could be opened: nothing will ever take it.
            self._parked.remove(call)
            self._finish(call, self._unreachable())

    def _transmit(self, conn: UpstreamConnection, call: Call) -> None:
        try:
            call.conn = conn
            # Pipelined, many clients' calls share a few connections: while others are
            # underway a plain write lets Twisted send everything written in this reactor
            # turn with one send() per connection. A call alone in the pool, or alone on its
            # connection, has nothing to be batched with: it leaves now rather than a
            # reactor turn later (less latency, two epoll calls fewer).
            call.seqid = conn.transmit(
                call.message,
                None if call.oneway else call.reply,
                call.header,
                call.headers,
                now=not self.pipelining or self._underway == 1,
            )
        except GatewayError as exc:
            self._finish(call, exc)
            return
        call.message = b""  # sent: do not keep the bytes alive while waiting
        if call.oneway:
            self._finish(call, b"", None)

    def _finish(
        self, call: Call, result: bytes | GatewayError, header: MessageHeader | None = None
    ) -> None:
        """``call`` is over with ``result``: free its slot (or its queue place) and its
        connection, answer it, start the next."""
        if call.state is _DONE:
            return
        conn = call.conn
        if conn is not None and not self.pipelining:
            call.conn = None
            if conn.usable and not conn.outstanding:
                self._available(conn)  # before the next call looks for a free one
            elif conn.connected_ok and not conn.closing:
                # Its call ended without its reply (a write failed, a reply too large was
                # being skipped): the bytes still due on it belong to no one.
                self._give_up(conn)
        was_underway = self._end(call)
        call.on_reply(result, header)
        if was_underway:
            self._start_waiting()

    def _drop(self, call: Call) -> None:
        """``call`` ends without an answer (cancelled by its caller)."""
        if call.state is _DONE:
            return
        self._unhook(call)
        if self._end(call):
            self._start_waiting()

    def _expire(self, call: Call) -> None:
        """``call`` ends with BackendTimeout (a late reply is dropped)."""
        self._unhook(call)
        self._finish(call, BackendTimeout(f"gateway: backend timeout after {call.timeout:g}s"))

    def _unhook(self, call: Call) -> None:
        """Before ending a call no reply ended: its connection forgets it (pooled: is closed,
        its late reply would come before the next call's), or it leaves the parked calls."""
        conn = call.conn
        if conn is not None:
            conn.forget(call.seqid)
            if not self.pipelining:
                call.conn = None
                self._give_up(conn)
        elif call.state is _UNDERWAY and call in self._parked:
            self._parked.remove(call)

    def _end(self, call: Call) -> bool:
        """Mark ``call`` done and give back what it held; True if it held a slot (the
        caller then starts the next waiting call). Every way a call ends goes through here."""
        was_underway = call.state is _UNDERWAY
        if was_underway:
            self._underway -= 1
            held = self._held[call.client] - 1
            if held:
                self._held[call.client] = held
            else:
                del self._held[call.client]
        elif call.state is _WAITING:
            self._queue.discard(call.client)  # its entry stays, skipped when reached
        call.state = _DONE
        call.message = b""  # a skipped queue entry must not keep the call's bytes alive
        if call.deadline is not None:
            call.deadline.cancel()
        if call.on_end is not None:
            call.on_end()
        return was_underway

    def _eligible(self, client: Hashable | None) -> bool:
        return self._held.get(client, 0) < self._share

    def _start_waiting(self) -> None:
        # Starting a call can end it at once (no connection, a failed write), and ending a
        # call starts the next: without this guard each of those would nest one level
        # deeper, and a long queue failing at once would overflow the stack. A nested
        # call returns here; the outermost loop starts them all.
        if self._starting:
            return
        self._starting = True
        try:
            queue = self._queue
            while queue and self._underway < self._width:
                call = queue.pop(self._eligible)
                if call is None:
                    break  # every client waiting holds its share already
                self._start(call)
        finally:
            self._starting = False

    def stop(self) -> None:
        """Stop reconnecting and close every connection; calls underway fail as their
        connections close (ConnectionLost), calls not sent yet with ShuttingDown."""
        self._stopped = True
        for delayed in (self._retry, self._sweep):
            if delayed is not None and delayed.active():
                delayed.cancel()
        self._retry = self._sweep = None
        for attempt in list(self._attempts):
            attempt.cancel()
        for call in self._queue.drain():
            self._refuse(call, ShuttingDown("gateway: shutting down"))
        parked, self._parked = list(self._parked), deque()
        for call in parked:
            self._finish(call, ShuttingDown("gateway: shutting down"))
        for conn in list(self._live):
            if conn.transport is not None:
                as_transport(conn.transport).loseConnection()

    def _refuse(self, call: Call, failure: GatewayError) -> None:
        """End a call already taken out of the queue (it holds nothing) with ``failure``."""
        call.state = _DONE
        call.message = b""
        if call.deadline is not None:
            call.deadline.cancel()
        if call.on_end is not None:
            call.on_end()
        call.on_reply(failure, None)


def _immediately(
    on_reply: OnReply, failure: GatewayError, on_end: Callable[[], None] | None
) -> None:
    """A call refused at once: it ends and fails before ``submit`` returns."""
    if on_end is not None:
        on_end()
    on_reply(failure, None)


def _settle(d: Deferred[bytes]) -> OnReply:
    """An OnReply that fires ``d`` (unless its caller cancelled it meanwhile)."""

    def settle(result: bytes | GatewayError, _header: MessageHeader | None) -> None:
        if d.called:
            return
        if isinstance(result, bytes):
            d.callback(result)
        else:
            d.errback(result)

    return settle
