"""The one module that owns backend connections.

An :class:`UpstreamPool` keeps ``connections`` persistent connections to one backend address.
Each connection carries many calls at once (pipelining): the pool rewrites every outgoing
seqid to one unique on that connection and matches replies **by seqid only** — Thrift servers
such as ``TTwisted`` answer out of order, and multiplexed replies carry the bare method name.

Framing is the backend's ``transport``: framed, buffered, or THeader (``header``): each call
then goes in a THeader frame of the backend's protocol carrying the info headers the handler
passes (the leader's), with the frame's seqid equal to the message's; replies are THeader
frames, split by :meth:`MessageReader.feed_parsed`, their info headers ignored, and matched
by the message seqid like any other.

A reply over ``max_frame_size`` fails only its own call (:class:`ReplyTooLarge`): on a framed
or THeader connection its header is read from the frame's first bytes, the rest is discarded
as it streams in, and the connection with every other call on it goes on. An unframed (buffered)
connection cannot skip a message without parsing all of it, so there the replies that came
whole before it are delivered, its own call fails with ReplyTooLarge, and the connection is
dropped (the other calls on it fail with :class:`ConnectionLost`). Replies that arrived whole
ahead of any other bad bytes are likewise delivered before the connection drops.

Concurrency is capped (``max_concurrency`` underway, ``queue_size`` waiting, in order);
overflow fails at once with :class:`Overloaded`. Calls are driven by callbacks
(:meth:`UpstreamPool.submit`): a call costs no Deferred unless its caller wants one
(:meth:`UpstreamPool.call`), and every call's timeout shares one timer (``Deadlines``).
Lost connections reconnect in the background with exponential backoff
(:class:`RetryingCall`); while no connection is up and none is being attempted for the
first time, calls fail fast with :class:`BackendUnreachable`.

A backend host that goes silent (network partition, host lost: packets dropped, no reset)
is given ``connect_timeout`` (at least 3 s) to answer, as a new connection would be: the
kernel drops a connection whose bytes stay unacknowledged that long, or whose keepalive
probes go unanswered that long (:func:`drop_when_silent`). Its calls fail with
ConnectionLost, reconnecting fails, and the node knows the backend is unreachable.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from gateway.errors import (
    BackendTimeout,
    BackendUnreachable,
    ConnectionLost,
    GatewayError,
    Overloaded,
    ReplyTooLarge,
    ShuttingDown,
)
from gateway.primitives import Deadline, Deadlines, RetryingCall, exponential_backoff
from gateway.proxy.connections import RateLimitedLog
from gateway.proxy.silence import drop_when_silent
from gateway.proxy.tls_upstream import backend_endpoint
from gateway.proxy.writes import send_now
from gateway.reactors import as_clock, as_transport
from gateway.thrift import (
    FrameTooLarge,
    Headers,
    Limits,
    MessageHeader,
    MessageReader,
    ProtocolKind,
    TransportKind,
    WireError,
    encode,
    encode_frame,
    read_header,
    replace_header,
)

log = logging.getLogger("gateway.upstream")

_SEQID_LIMIT = 2**31 - 1
_HEADER = TransportKind.HEADER


# Called with the reply message and its parsed header, or with the failure and None.
OnReply = Callable[[bytes | GatewayError, MessageHeader | None], None]

_WAITING, _UNDERWAY, _DONE = "waiting", "underway", "done"


class Call:
    """One call of an :class:`UpstreamPool`: waiting for a slot, underway, or done."""

    __slots__ = (
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
    ) -> None:
        self.pool = pool
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


class UpstreamConnection(TwistedProtocol):
    """One backend connection with any number of calls outstanding, matched by seqid."""

    def __init__(
        self,
        transport_kind: TransportKind,
        protocol: ProtocolKind,
        limits: Limits,
        oversized_log: RateLimitedLog | None = None,
        silence_timeout: float | None = None,
    ):
        self._transport_kind = transport_kind
        self._silence_timeout = silence_timeout
        # Shared by the pool's connections: clients choosing arguments that make big replies
        # could otherwise fill the log one line per call.
        self._oversized_log = oversized_log
        self._protocol = protocol
        self._limits = limits
        # Oversized framed/THeader replies are skipped, not fatal: they fail only their call.
        self._reader = MessageReader(transport_kind, protocol, limits, skip_oversized=True)
        # seqid -> what to call with the reply (bytes) or the call's failure (a GatewayError).
        self._pending: dict[int, OnReply] = {}
        self._next_seqid = 0
        self.lost: Deferred[None] = Deferred()
        self.connected_ok = False

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def connectionMade(self) -> None:
        self.connected_ok = True
        if self._silence_timeout is not None:
            drop_when_silent(self.transport, self._silence_timeout)

    def transmit(
        self,
        message: bytes,
        on_reply: OnReply | None,
        header: MessageHeader | None = None,
        headers: Headers = (),
        now: bool = False,
    ) -> int:
        """Send ``message`` under a seqid unique on this connection and return that seqid.

        ``on_reply`` is called exactly once with the reply message, or with the GatewayError
        that ends the call (connection lost, reply too large) - unless :meth:`forget` came
        first. None: a oneway call, no reply. ``header``, if given, must be
        ``read_header(message, protocol)`` (the seqid rewrite then needs no second decode);
        ``headers`` are the THeader info headers to send (THeader backends only). ``now``:
        try to send it with one ``send()`` right away (see :meth:`UpstreamPool._transmit`)
        instead of in the reactor's next turn. Raises BackendUnreachable if the connection
        is gone.
        """
        if self.transport is None or not self.connected_ok:
            raise BackendUnreachable("gateway: backend connection lost")
        self._next_seqid = self._next_seqid + 1 if self._next_seqid < _SEQID_LIMIT else 1
        seqid = self._next_seqid
        message = replace_header(message, self._protocol, seqid=seqid, header=header)
        if self._transport_kind is _HEADER:
            framed = encode_frame(message, seqid=seqid, protocol=self._protocol, headers=headers)
        else:
            framed = encode(self._transport_kind, message)
        if now:
            send_now(self.transport, framed)
        else:
            as_transport(self.transport).write(framed)
        if on_reply is not None:
            self._pending[seqid] = on_reply
        return seqid

    def forget(self, seqid: int) -> None:
        """The call is over for us (timed out, caller gone): a late reply is dropped."""
        self._pending.pop(seqid, None)

    def dataReceived(self, data: bytes) -> None:
        reader = self._reader
        try:
            # The reader decodes every reply's header to split the stream (an unreadable
            # header is a WireError here), so the seqid is taken from it, not decoded again.
            messages = reader.feed_parsed(data)
        except WireError as exc:
            self._fail_skipped()
            # Replies that arrived whole ahead of the bad bytes are good: deliver them.
            for message in exc.complete:
                self._deliver(message, read_header(message, self._protocol).seqid)
            if isinstance(exc, FrameTooLarge) and exc.header is not None:
                # Unframed: this reply cannot be skipped, but its call can be told why.
                self._fail_too_large(exc.header, None)
            # The byte stream can no longer be trusted: drop it; calls still pending fail
            # with ConnectionLost in connectionLost.
            log.warning("backend sent malformed data (%s); dropping the connection", exc)
            if self.transport is not None:
                as_transport(self.transport).abortConnection()
            return
        if reader.skipped:
            self._fail_skipped()
        for message, header in messages:
            self._deliver(message, header.seqid, header)

    def _deliver(self, message: bytes, seqid: int, header: MessageHeader | None = None) -> None:
        on_reply = self._pending.pop(seqid, None)
        if on_reply is not None:
            on_reply(message, header)

    def _fail_skipped(self) -> None:
        for skipped in self._reader.take_skipped():
            self._fail_too_large(skipped.header, skipped.size)

    def _fail_too_large(self, header: MessageHeader, size: int | None) -> None:
        limit = self._limits.max_frame_size
        of = f"of {size} bytes " if size is not None else ""
        warn = self._oversized_log.warning if self._oversized_log is not None else log.warning
        warn(
            "backend reply %sfor %s exceeds max_frame_size %d; failing that call",
            of,
            header.name,
            limit,
        )
        on_reply = self._pending.pop(header.seqid, None)
        if on_reply is not None:
            too_large = f"gateway: backend reply {of}exceeds max_frame_size {limit}"
            on_reply(ReplyTooLarge(too_large), None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected_ok = False
        pending, self._pending = self._pending, {}
        for on_reply in pending.values():
            on_reply(ConnectionLost("gateway: backend connection lost mid-call"), None)
        self.lost.callback(None)


class UpstreamPool:
    """Persistent, pipelined connections to one backend address, with a concurrency cap."""

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
        backoff: Callable[[], Any] | None = None,
        tls: Any = None,
    ) -> None:
        """``tls``: a pyOpenSSL client connection creator (gateway.proxy.tls_upstream), or
        None for plain TCP."""
        self.address = f"{host}:{port}"
        self.protocol = protocol
        self._reactor = reactor
        self._clock = as_clock(reactor)
        self._endpoint = backend_endpoint(reactor, host, port, connect_timeout, tls)
        # Why the last connection attempt failed, when it says more than "unreachable" (a
        # TLS handshake that failed): calls failing fast meanwhile get it.
        self._down: GatewayError | None = None
        self._warned = False
        self._connect_timeout = connect_timeout
        self._transport_kind = transport
        self._limits = limits
        self._size = connections
        self._backoff = backoff or (lambda: exponential_backoff(0.05, 2.0, 2.0))
        self._live: list[UpstreamConnection] = []
        self._connecting = 0  # slots whose first attempt (or a retry) is underway
        self._retries: list[RetryingCall[UpstreamConnection]] = []
        self._next = 0
        self._stopped = False
        self._oversized_log = RateLimitedLog(reactor, logger=log)
        # One timer for every call's timeout (see gateway.primitives.deadlines).
        self._deadlines = Deadlines(reactor, resolution=0.05)
        # Concurrency cap: at most ``max_concurrency`` calls underway, ``queue_size`` waiting
        # (cancelled ones are left in the deque and skipped; ``_waiting`` counts live ones).
        self._width = max_concurrency
        self._capacity = queue_size
        self._underway = 0
        self._queue: deque[Call] = deque()
        self._waiting = 0
        self._starting = False  # _start_waiting is running (see there)
        self._parked: list[Call] = []  # started before any connection was up (start-up)

    # -- connection slots -------------------------------------------------------------------

    def start(self) -> None:
        for _ in range(self._size):
            self._connect_slot(first=True)

    def _connect_slot(self, first: bool) -> None:
        if self._stopped:
            return
        self._connecting += 1

        def attempt() -> Deferred[UpstreamConnection]:
            conn = UpstreamConnection(
                self._transport_kind,
                self.protocol,
                self._limits,
                self._oversized_log,
                silence_timeout=self._connect_timeout,
            )
            connected: Deferred[UpstreamConnection] = connectProtocol(  # type: ignore[no-untyped-call]  # untyped in Twisted
                self._endpoint, conn
            )
            return connected

        retrying: RetryingCall[UpstreamConnection] = RetryingCall(self._reactor, attempt)
        self._retries.append(retrying)
        attempts_seen = [0]

        def on_attempt_failed(reason: Failure) -> bool:
            # Each failed attempt marks the backend as down so callers fail fast instead of
            # waiting out the backoff; the retry loop keeps trying in the background.
            attempts_seen[0] += 1
            self._down = reason.value if isinstance(reason.value, GatewayError) else None
            if attempts_seen[0] == 1:
                self._connecting -= 1
                # One line per pool (not per connection slot) until it connects again; a
                # reconnect is worth one too when it fails for a reason (a TLS handshake).
                if not self._warned and (first or self._down is not None):
                    self._warned = True
                    log.warning(
                        "backend %s unreachable: %s", self.address, reason.getErrorMessage()
                    )
                self._notify_ready()
            return not self._stopped

        d = retrying.start(backoff=self._backoff(), failure_tester=on_attempt_failed)

        def connected(conn: UpstreamConnection) -> None:
            self._retries.remove(retrying)
            self._down, self._warned = None, False
            if attempts_seen[0] == 0:
                self._connecting -= 1
            else:
                log.info("backend %s reachable again", self.address)
            self._live.append(conn)
            conn.lost.addCallback(lambda _: self._on_lost(conn))
            self._notify_ready()

        def gave_up(reason: Failure) -> None:
            if retrying in self._retries:
                self._retries.remove(retrying)
            # Only stop() cancels the loop (the tester retries everything else): nothing to report.
            return None

        d.addCallbacks(connected, gave_up)

    def _on_lost(self, conn: UpstreamConnection) -> None:
        if conn in self._live:
            self._live.remove(conn)
        if not self._stopped:
            self._connect_slot(first=False)

    def _pick_live(self) -> UpstreamConnection | None:
        """The live connection with the fewest outstanding calls, None if none is up."""
        live = self._live
        n = len(live)
        if not n:
            return None
        # Least outstanding calls first; ties rotate so load spreads over connections. (A
        # plain loop: the first least one in rotation order, as min() would pick, without a
        # generator and a key lambda per call.)
        self._next += 1
        start = self._next
        best = live[start % n]
        least = best.outstanding
        for i in range(1, n):
            conn = live[(start + i) % n]
            if conn.outstanding < least:
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
    ) -> Call | None:
        """Send one unframed message (any seqid); ``on_reply`` gets the reply or the failure.

        ``on_reply`` is called exactly once - with the backend's reply message, or with a
        GatewayError (BackendUnreachable, ConnectionLost, BackendTimeout, Overloaded,
        ShuttingDown, ReplyTooLarge) - unless the returned :class:`Call` is cancelled first
        (the caller is gone). A oneway call gets ``b""`` once it is sent. When the call
        fails at once, ``on_reply`` has run already and None is returned. ``timeout`` counts
        from now and includes time spent waiting behind ``max_concurrency``. ``header``, if
        given, must be ``read_header(message, self.protocol)``; ``headers`` go in the THeader
        frame (THeader backends only). ``on_end`` runs once the call is over, however it
        ended (answered, failed, cancelled).
        """
        if self._stopped:
            _immediately(on_reply, ShuttingDown("gateway: shutting down"), on_end)
            return None
        if self._underway >= self._width:
            if self._waiting >= self._capacity:
                overloaded = Overloaded(f"gateway: overloaded, backend {self.address} queue full")
                _immediately(on_reply, overloaded, on_end)
                return None
            call = Call(self, message, on_reply, oneway, header, headers, timeout, on_end)
            self._queue.append(call)
            self._waiting += 1
        else:
            call = Call(self, message, on_reply, oneway, header, headers, timeout, on_end)
            self._start(call)
            if call.done:
                return None
        call.deadline = self._deadlines.add(timeout, call.expire)
        return call

    def call(
        self,
        message: bytes,
        *,
        timeout: float,
        oneway: bool = False,
        header: MessageHeader | None = None,
        headers: Headers = (),
    ) -> Deferred[bytes]:
        """:meth:`submit` with a Deferred: it fires with the reply, fails with the
        GatewayError, and cancelling it cancels the call."""
        d: Deferred[bytes] = Deferred(lambda _: call.cancel() if call is not None else None)
        call = self.submit(
            message,
            _settle(d),
            timeout=timeout,
            oneway=oneway,
            header=header,
            headers=headers,
        )
        return d

    def _start(self, call: Call) -> None:
        self._underway += 1
        call.state = _UNDERWAY
        conn = self._pick_live()
        if conn is None:
            if self._connecting:  # start-up, or right after a loss: wait for that attempt
                self._parked.append(call)
                return
            self._finish(call, self._unreachable())
            return
        self._transmit(conn, call)

    def _transmit(self, conn: UpstreamConnection, call: Call) -> None:
        try:
            call.conn = conn
            # Calls of many clients share a few pipelined connections, so while others are
            # underway a plain write lets Twisted send everything written in this reactor
            # turn with one send() per connection - under load far cheaper than a send()
            # per call. A call alone in the pool (light load) has nothing to be batched
            # with: it leaves now rather than a reactor turn later (less latency, two
            # epoll calls fewer).
            call.seqid = conn.transmit(
                call.message,
                None if call.oneway else call.reply,
                call.header,
                call.headers,
                now=self._underway == 1,
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
        """``call`` is over with ``result``: free its slot (or its queue place), answer it,
        start the next."""
        if call.state is _DONE:
            return
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
        """Before ending a call no reply ended: its connection forgets it, or it leaves the
        calls parked for a connection."""
        if call.conn is not None:
            call.conn.forget(call.seqid)
        elif call.state is _UNDERWAY and call in self._parked:
            self._parked.remove(call)

    def _end(self, call: Call) -> bool:
        """Mark ``call`` done and give back what it held; True if it held a slot (the
        caller then starts the next waiting call). Every way a call ends goes through here."""
        was_underway = call.state is _UNDERWAY
        if was_underway:
            self._underway -= 1
        elif call.state is _WAITING:
            self._waiting -= 1  # its entry stays in the queue, skipped when reached
        call.state = _DONE
        call.message = b""  # a skipped queue entry must not keep the call's bytes alive
        if call.deadline is not None:
            call.deadline.cancel()
        if call.on_end is not None:
            call.on_end()
        return was_underway

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
                call = queue.popleft()
                if call.state is _WAITING:
                    self._waiting -= 1
                    self._start(call)
        finally:
            self._starting = False

    def _notify_ready(self) -> None:
        if self._live or self._connecting == 0:
            parked, self._parked = self._parked, []
            for call in parked:
                if call.state is not _UNDERWAY:
                    continue
                conn = self._pick_live()
                if conn is None:
                    self._finish(call, self._unreachable())
                else:
                    self._transmit(conn, call)

    def _unreachable(self) -> GatewayError:
        return self._down or BackendUnreachable(f"gateway: backend {self.address} unreachable")

    def stop(self) -> None:
        """Stop reconnecting and close every connection; calls underway fail as their
        connections close (ConnectionLost), calls not sent yet with ShuttingDown."""
        self._stopped = True
        for retrying in list(self._retries):
            retrying.cancel()
        waiting = [call for call in self._queue if call.state is _WAITING]
        self._queue.clear()
        parked, self._parked = self._parked, []
        for call in waiting + parked:
            self._finish(call, ShuttingDown("gateway: shutting down"))
        for conn in list(self._live):
            if conn.transport is not None:
                as_transport(conn.transport).loseConnection()


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
