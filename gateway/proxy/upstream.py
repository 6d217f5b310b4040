"""The one module that owns backend connections.

An :class:`UpstreamPool` keeps ``connections`` persistent connections to one backend address.
Each connection carries many calls at once (pipelining): the pool rewrites every outgoing
seqid to one unique on that connection and matches replies **by seqid only** — Thrift servers
such as ``TTwisted`` answer out of order, and multiplexed replies carry the bare method name.

A reply over ``max_frame_size`` fails only its own call (:class:`ReplyTooLarge`): on a framed
connection its header is read from the frame's first bytes, the rest is discarded as it
streams in, and the connection with every other call on it goes on. An unframed (buffered)
connection cannot skip a message without parsing all of it, so there the replies that came
whole before it are delivered, its own call fails with ReplyTooLarge, and the connection is
dropped (the other calls on it fail with :class:`ConnectionLost`). Replies that arrived whole
ahead of any other bad bytes are likewise delivered before the connection drops.

Concurrency is capped by a :class:`DispatchQueue` (``max_concurrency`` underway, ``queue_size``
waiting); overflow fails at once with :class:`Overloaded`. Lost connections reconnect in the
background with exponential backoff (:class:`RetryingCall`); while no connection is up and
none is being attempted for the first time, calls fail fast with :class:`BackendUnreachable`.

A backend host that goes silent (network partition, host lost: packets dropped, no reset)
is given ``connect_timeout`` (at least 3 s) to answer, as a new connection would be: the
kernel drops a connection whose bytes stay unacknowledged that long, or whose keepalive
probes go unanswered that long (:func:`drop_when_silent`). Its calls fail with
ConnectionLost, reconnecting fails, and the node knows the backend is unreachable.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
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
from gateway.primitives import (
    DispatchQueue,
    QueueFull,
    QueueStopped,
    RetryingCall,
    exponential_backoff,
)
from gateway.proxy.connections import RateLimitedLog
from gateway.reactors import as_clock, as_transport
from gateway.thrift import (
    FrameTooLarge,
    Limits,
    MessageHeader,
    MessageReader,
    ProtocolKind,
    TransportKind,
    WireError,
    encode,
    read_header,
    replace_header,
)

log = logging.getLogger("gateway.upstream")

_SEQID_LIMIT = 2**31 - 1


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
        # Oversized framed replies are skipped, not fatal: they fail only their own call.
        self._reader = MessageReader(transport_kind, protocol, limits, skip_oversized=True)
        self._pending: dict[int, Deferred[bytes]] = {}
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

    def send(
        self, message: bytes, oneway: bool, header: MessageHeader | None = None
    ) -> Deferred[bytes]:
        """Send ``message`` under a seqid unique on this connection; fire with the reply.

        ``header``, if given, must be ``read_header(message, protocol)``: the handler decoded
        it already, and the seqid rewrite then needs no second decode.
        """
        if self.transport is None or not self.connected_ok:
            return defer.fail(BackendUnreachable("gateway: backend connection lost"))
        self._next_seqid = self._next_seqid + 1 if self._next_seqid < _SEQID_LIMIT else 1
        seqid = self._next_seqid
        message = replace_header(message, self._protocol, seqid=seqid, header=header)
        framed = encode(self._transport_kind, message)
        as_transport(self.transport).write(framed)
        if oneway:
            return defer.succeed(b"")

        def forget(_: Deferred[bytes]) -> None:
            # Cancelled (timeout or every caller gone): a late reply for this seqid is dropped.
            self._pending.pop(seqid, None)

        d: Deferred[bytes] = Deferred(forget)
        self._pending[seqid] = d
        return d

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
            self._deliver(message, header.seqid)

    def _deliver(self, message: bytes, seqid: int) -> None:
        d = self._pending.pop(seqid, None)
        if d is not None:
            d.callback(message)

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
        d = self._pending.pop(header.seqid, None)
        if d is not None:
            d.errback(ReplyTooLarge(f"gateway: backend reply {of}exceeds max_frame_size {limit}"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected_ok = False
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(ConnectionLost("gateway: backend connection lost mid-call"))
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
    ) -> None:
        self.address = f"{host}:{port}"
        self.protocol = protocol
        self._reactor = reactor
        self._clock = as_clock(reactor)
        self._endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=connect_timeout)
        self._connect_timeout = connect_timeout
        self._transport_kind = transport
        self._limits = limits
        self._size = connections
        self._backoff = backoff or (lambda: exponential_backoff(0.05, 2.0, 2.0))
        self._live: list[UpstreamConnection] = []
        self._connecting = 0  # slots whose first attempt (or a retry) is underway
        self._ready_waiters: list[Deferred[None]] = []
        self._retries: list[RetryingCall[UpstreamConnection]] = []
        self._next = 0
        self._stopped = False
        self._oversized_log = RateLimitedLog(reactor, logger=log)
        self._queue: DispatchQueue[Callable[[], Deferred[bytes]], bytes] = DispatchQueue(
            lambda job: job(), width=max_concurrency, capacity=queue_size
        )

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
            if attempts_seen[0] == 1:
                self._connecting -= 1
                if first:
                    log.warning(
                        "backend %s unreachable: %s", self.address, reason.getErrorMessage()
                    )
                self._notify_ready()
            return not self._stopped

        d = retrying.start(backoff=self._backoff(), failure_tester=on_attempt_failed)

        def connected(conn: UpstreamConnection) -> None:
            self._retries.remove(retrying)
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

    def _notify_ready(self) -> None:
        if self._live or self._connecting == 0:
            waiters, self._ready_waiters = self._ready_waiters, []
            for w in waiters:
                w.callback(None)

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

    def _pick(self) -> Deferred[UpstreamConnection]:
        conn = self._pick_live()
        if conn is not None:
            return defer.succeed(conn)
        if self._connecting == 0:
            return defer.fail(BackendUnreachable(f"gateway: backend {self.address} unreachable"))
        # Only at startup (or right after a loss): wait for the attempt underway to decide.
        waiter: Deferred[None] = Deferred(lambda d: self._ready_waiters.remove(d))
        self._ready_waiters.append(waiter)
        return waiter.addCallback(lambda _: self._pick())

    # -- calls ------------------------------------------------------------------------------

    def call(
        self,
        message: bytes,
        *,
        timeout: float,
        oneway: bool = False,
        header: MessageHeader | None = None,
    ) -> Deferred[bytes]:
        """Send one unframed message (any seqid); fire with the backend's reply message.

        Fails with BackendUnreachable, ConnectionLost, BackendTimeout, Overloaded or
        ShuttingDown. ``timeout`` counts from now and includes time spent queued behind
        ``max_concurrency``. ``header``, if given,
        must be ``read_header(message, self.protocol)`` (passed on to spare a decode).
        """
        if self._stopped:
            return defer.fail(ShuttingDown("gateway: shutting down"))

        def job() -> Deferred[bytes]:
            # Nearly always a connection is up: send at once, without a Deferred (and its
            # chaining into send's) for the connection.
            conn = self._pick_live()
            if conn is not None:
                return conn.send(message, oneway, header)
            return self._pick().addCallback(lambda conn: conn.send(message, oneway, header))

        try:
            d = self._queue.put(job)
        except QueueFull:
            return defer.fail(Overloaded(f"gateway: overloaded, backend {self.address} queue full"))
        except QueueStopped:
            return defer.fail(ShuttingDown("gateway: shutting down"))

        def timed_out(result: bytes | Failure, _timeout: float) -> bytes | Failure:
            # Called by addTimeout after it cancelled the call (queued or underway).
            if isinstance(result, Failure) and isinstance(result.value, CancelledError):
                return _failure(BackendTimeout(f"gateway: backend timeout after {timeout:g}s"))
            return result

        d.addTimeout(timeout, self._reactor, onTimeoutCancel=timed_out)
        return d.addErrback(_as_gateway_error)

    def stop(self) -> None:
        """Stop reconnecting and close every connection; outstanding calls fail."""
        self._stopped = True
        for retrying in list(self._retries):
            retrying.cancel()
        for conn in list(self._live):
            if conn.transport is not None:
                as_transport(conn.transport).loseConnection()


SILENCE_FLOOR = 3.0  # seconds: a packet or two lost (resent after 0.2 s, 0.4 s, ...) is not death


def drop_when_silent(transport: object, seconds: float) -> None:
    """Have the kernel drop this TCP connection once the peer host was silent ``seconds``
    (at least :data:`SILENCE_FLOOR`).

    TCP_USER_TIMEOUT: bytes we sent that stay unacknowledged that long abort it. An idle
    connection is probed (keepalive) every third of that time, at least every second, and
    aborted once no probe was answered for that long - two or more probes lost in a row.
    Only the peer's kernel has to answer, so a slow backend process is never taken for a
    dead host, and the floor keeps a lost packet or two on a lossy link from looking like
    one. Without this, a partitioned backend (packets dropped, no reset) keeps the
    connection open for many minutes of retransmissions: every call sent on it waits out
    its timeout - an ambiguous failure, shared with the followers of non-idempotent
    methods - and the node never learns that the backend is unreachable (a local failure,
    which it would hand back to them). Transports without a TCP socket are left alone.
    """
    get_handle = getattr(transport, "getHandle", None)
    sock = get_handle() if get_handle is not None else None
    if not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM:
        return
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    seconds = max(seconds, SILENCE_FLOOR)
    probe_every = max(1, int(seconds // 3))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = [("TCP_KEEPIDLE", probe_every), ("TCP_KEEPINTVL", probe_every)]
    options.append(("TCP_USER_TIMEOUT", round(seconds * 1000)))
    for name, value in options:
        option = getattr(socket, name, None)  # Linux names; other systems keep their defaults
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _as_gateway_error(reason: Failure) -> Failure:
    """Anything but a GatewayError (or a caller's cancel) becomes ConnectionLost."""
    if isinstance(reason.value, GatewayError | CancelledError):
        return reason
    return _failure(ConnectionLost(f"gateway: backend error: {reason.value}"))


def _failure(exc: BaseException) -> Failure:
    return Failure(exc)  # type: ignore[no-untyped-call]  # Twisted leaves Failure() untyped
