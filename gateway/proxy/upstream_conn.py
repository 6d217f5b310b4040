"""One backend connection: calls written under fresh seqids, replies matched by seqid.

What is buffered toward a backend is bounded: the connection registers itself as the
transport's streaming producer, so Twisted tells it (``pauseProducing``) once more than
:data:`MAX_UNSENT` bytes wait for a backend that does not read. A paused connection is given no
new call until the backend has read them (``resumeProducing``): further calls wait in the
pool's bounded queue, where their timeout runs, and past ``queue_size`` they fail with
``overloaded``. So a backend that never reads costs at most ``MAX_UNSENT`` plus one message per
connection, never an unbounded buffer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from gateway.errors import (
    BackendUnreachable,
    ConnectionLost,
    GatewayError,
    ReplyTooLarge,
)
from gateway.proxy.connections import RateLimitedLog
from gateway.proxy.silence import drop_when_silent
from gateway.proxy.writes import send_now
from gateway.reactors import as_transport
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
# Bytes written and not yet taken by the backend's socket beyond which a connection gets no
# new call (Twisted's producer threshold, which defaults to 64 KiB: pipelined calls of many
# clients written in one reactor turn may legitimately exceed that).
MAX_UNSENT = 1 << 20

# Called with the reply message and its parsed header, or with the failure and None.
OnReply = Callable[[bytes | GatewayError, MessageHeader | None], None]


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
        self.closing = False  # the pool gave up on it (a call timed out, idle): no reuse
        self.paused = False  # the backend is not reading: MAX_UNSENT bytes wait for it
        self.on_resume: Callable[[UpstreamConnection], None] | None = None
        self.idle_since = 0.0  # pooled: when it last became free

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def connectionMade(self) -> None:
        self.connected_ok = True
        if self._silence_timeout is not None:
            drop_when_silent(self.transport, self._silence_timeout)
        transport: Any = self.transport
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = MAX_UNSENT
        # Streaming producer: Twisted pauses us past bufferSize unsent, resumes once sent.
        transport.registerProducer(self, True)

    # -- IPushProducer: what a backend that does not read is owed ---------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.on_resume is not None:
            self.on_resume(self)

    def stopProducing(self) -> None:
        self.paused = True

    @property
    def usable(self) -> bool:
        """Up, not given up on, and the backend is reading what it is sent."""
        return self.connected_ok and not self.closing and not self.paused

    def close(self) -> None:
        """Give up on this connection: no reuse, the backend sees it close now."""
        self.closing = True
        if self.transport is not None:
            as_transport(self.transport).abortConnection()

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
        self.on_resume = None
        pending, self._pending = self._pending, {}
        for on_reply in pending.values():
            on_reply(ConnectionLost("gateway: backend connection lost mid-call"), None)
        self.lost.callback(None)
