"""The client-facing Twisted server: one :class:`ClientConnection` per client socket.

Each connection detects its transport (framed / buffered / THeader) and protocol (binary,
non-strict binary, compact) from its first bytes, splits messages, and hands each to the
shared :class:`CallHandler`. Replies go back as they complete (Thrift clients match by seqid;
synchronous clients send one call at a time), each in its caller's dialect: on a THeader
connection in a frame echoing the call's frame fields (seqid, flags, protocol; see
``gateway.thrift.theader.reply_frame``). Bad input closes only that connection, after a
``TApplicationException`` where one can be written (a bad THeader frame is answered in a frame
when its fields decoded: ``gateway.thrift.error_answer``); a framed or THeader call over
``max_frame_size`` is skipped unread and answered with a PROTOCOL_ERROR, and the connection
goes on.

Backpressure (limits in :class:`ClientLimits`, bookkeeping in :class:`ConnectionTable`):

* the connection is its transport's *streaming producer*: once more than
  ``max_unsent_bytes`` of replies wait in the transport's buffer (the client does not read
  them), the transport calls :meth:`ClientConnection.pauseProducing` and the connection
  stops reading the client's socket until the buffer has drained (``resumeProducing``);
* at most ``max_pipelined`` calls per connection are dispatched and unanswered; messages
  parsed beyond that wait in a small per-connection queue (at most one read's worth, since
  reading stops at once) and are dispatched, in order, as answers go out.

Either way the client's unread calls stay in the kernel's socket buffers and its writes
block, instead of the gateway's memory growing without bound.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IAddress, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.errors import PROTOCOL_ERROR
from gateway.primitives import DeferredPool
from gateway.proxy.connections import DEFAULT_CLIENT_LIMITS, ClientLimits, ConnectionTable
from gateway.proxy.dialects import BadFirstCall, Layer, detect_stack, max_prefix, unwrap, wrap
from gateway.proxy.fairness import client_scope
from gateway.proxy.handler import CallHandler
from gateway.proxy.http import Http, HttpError, refusal
from gateway.proxy.tls import peer_identity
from gateway.proxy.writes import send_now
from gateway.reactors import as_transport
from gateway.stats import NodeStats
from gateway.thrift import (
    FrameTooLarge,
    HeaderInfo,
    Limits,
    MalformedMessage,
    MessageHeader,
    MessageReader,
    MessageType,
    NotThrift,
    ProtocolKind,
    TransportKind,
    WireError,
    application_exception,
    encode,
    error_answer,
    reply_frame,
)

log = logging.getLogger("gateway.server")

_ONEWAY = MessageType.ONEWAY
_HEADER = TransportKind.HEADER

# A call as split from the stream: its bytes, its message header, its THeader frame fields.
Call = tuple[bytes, MessageHeader | None, HeaderInfo | None]


@implementer(IPushProducer)
class ClientConnection(Protocol):
    def __init__(
        self, handler: CallHandler, limits: Limits, calls: DeferredPool, table: ConnectionTable
    ) -> None:
        self._handler = handler
        self._limits = limits
        self._calls = calls
        self._table = table
        self._max_pipelined = table.limits.max_pipelined
        self._prefix = b""
        self._reader: MessageReader | None = None
        self._transport_kind: TransportKind | None = None
        self._protocol: ProtocolKind | None = None
        # Layers around the Thrift stream (HTTP, framing, zlib, JSON), outermost first.
        self._layers: list[Layer] = []
        self._in_idle = False  # _layers_idle is running
        self._peer_id = b""  # the verified client certificate (TLS listener), see _dispatch
        self._pending: set[Deferred[bytes | None]] = set()
        # Parsed beyond max_pipelined, dispatched in order as answers go out.
        self._held: deque[Call] = deque()
        self._pumping = False  # _pump is running (a synchronous answer must not re-enter)
        self._unsent_full = False  # the transport's buffer is over max_unsent_bytes
        self._reading = True  # the socket is being read
        self._producing = False  # registered as the transport's producer
        self._closing = False  # bad input seen: read nothing more
        self._hung_up = False  # loseConnection called: write nothing more
        self._in_partial = False  # the table counts a partial message of ours
        self.active = False  # bytes arrived since the last idle sweep (ConnectionTable)
        self.idle_since = 0.0

    def _peer(self) -> str:
        if self.transport is None:
            return "?"
        peer = as_transport(self.transport).getPeer()
        return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"

    def connectionMade(self) -> None:
        transport: Any = self.transport
        # The transport pauses its producer once more than bufferSize bytes wait unsent.
        transport.bufferSize = self._table.limits.max_unsent_bytes
        transport.registerProducer(self, True)
        self._producing = True
        self._table.opened(self)

    # -- reading ---------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.active = True  # all the idle sweep needs: no clock read per chunk
        if self._closing:
            return
        if self._reader is None:
            self._prefix += data
            try:
                # Plain streams, and those wrapped in layers (gateway.proxy.dialects).
                stack = detect_stack(self._prefix, self._limits)
            except HttpError as exc:
                self._refuse(exc)
                return
            except BadFirstCall as exc:
                stack = (exc.layers, TransportKind.BUFFERED, ProtocolKind.BINARY, b"")
                self._layers, self._transport_kind, self._protocol, _ = stack
                self._bad_input(exc.error)
                return
            except NotThrift as exc:
                self._close(f"not a Thrift stream ({exc})")
                return
            if stack is None:
                if len(self._prefix) > max_prefix(self._limits):
                    self._close("could not detect the Thrift transport/protocol")
                    return
                # Bytes before the dialect is known (an HTTP head still arriving) are a
                # partial message too: body_timeout closes a connection that never finishes.
                self._note_partial(len(self._prefix))
                return
            self._layers, self._transport_kind, self._protocol, data = stack
            # Data arrives only after the TLS handshake: the peer's certificate is known.
            self._peer_id = peer_identity(self.transport)
            self._reader = MessageReader(
                self._transport_kind, self._protocol, self._limits, skip_oversized=True
            )
            self._prefix = b""
        elif self._layers:
            try:
                data = unwrap(self._layers, data)
            except HttpError as exc:
                self._refuse(exc)
                return
            except WireError as exc:
                self._bad_input(exc)
                return
        reader = self._reader
        try:
            # With their headers: the reader decoded them to split the stream, and the
            # handler would otherwise decode each one again. On THeader connections also
            # with the frame fields each reply echoes (None otherwise).
            calls = reader.feed_frames(data)
        except WireError as exc:
            self._answer_skipped()
            self._note_partial(None)  # the reader dropped its buffer
            # Calls pipelined ahead of the bad bytes are still answered.
            for call in exc.frames:
                self._accept(call)
            self._bad_input(exc)
            return
        if reader.skipped:
            self._answer_skipped()
        # _accept, inlined: this loop runs once per call.
        pending, held, limit = self._pending, self._held, self._max_pipelined
        for call in calls:
            if held or len(pending) >= limit:
                held.append(call)
            else:
                self._dispatch(*call)
        if held or len(pending) >= limit:
            self._update_reading()
        # Last: over max_partial_bytes the table may close this very connection. Bytes a
        # dialect layer holds (an HTTP head, a JSON message not yet whole) count too.
        partial = reader.partial
        if self._layers:
            in_layers = sum(layer.held for layer in self._layers)
            if in_layers:
                partial = (partial or 0) + in_layers
        if partial is not None or self._in_partial:
            self._note_partial(partial)
            if self._reader is None:
                return  # closed for it (close_partial)
        if self._layers:
            self._layers_idle()

    def _layers_idle(self) -> None:
        """An HTTP request whose calls are all answered gets its response (then the next
        request waiting behind it is read)."""
        http = self._layers[0]
        if not isinstance(http, Http) or self._in_idle:
            return  # reading the next request below answers it in this loop, not nested
        self._in_idle = True
        try:
            while not self._pending and not self._held and http.awaiting_response:
                self._write_raw(http.respond())
                if http.closing:
                    self._close("HTTP request asked to close the connection", quiet=True)
                    return
                if not http.has_next():
                    return
                self.dataReceived(b"")  # may answer it at once (a cache hit): loop
        finally:
            self._in_idle = False

    def _refuse(self, exc: HttpError) -> None:
        """An HTTP request refused with an error status; the connection closes."""
        self._write_raw(refusal(exc))
        self._close(f"HTTP request refused ({exc.status}: {exc})")

    def _note_partial(self, size: int | None) -> None:
        """Tell the table how much of a message underway we buffer (None: none underway)."""
        if size is None and not self._in_partial:
            return
        self._in_partial = size is not None
        self._table.partial(self, size)

    def close_partial(self, why: str) -> None:
        """The table's verdict on our partial message (body_timeout, max_partial_bytes): its
        bytes are dropped now, calls already dispatched are still answered, then we close."""
        self._reader = None  # frees the buffered bytes; nothing more is read
        self._prefix = b""
        self._in_partial = False
        self._close(why)

    def _bad_input(self, exc: WireError) -> None:
        # The stream lost its message boundaries: answer the call if we know its seqid, then
        # close (later bytes cannot be trusted). An unframed call over max_frame_size lands
        # here too: it cannot be skipped without parsing all of it.
        if self._transport_kind is _HEADER and isinstance(exc, MalformedMessage):
            self._bad_frame(exc)
            return
        if isinstance(exc, MalformedMessage):
            text, why = f"gateway: malformed message: {exc}", f"malformed message ({exc})"
        elif isinstance(exc, FrameTooLarge):
            limit = self._limits.max_frame_size
            text, why = f"gateway: call exceeds max_frame_size {limit}", f"call too large ({exc})"
        else:
            self._close(f"wire error ({exc})")
            return
        if exc.header is not None:
            self._table.stats.calls += 1
            if exc.header.type is not _ONEWAY:
                self._write_error(exc.header, text)
        self._close(why)

    def _bad_frame(self, exc: MalformedMessage) -> None:
        """A THeader frame that cannot be used (a bad header, transform or payload): answered
        in a frame echoing its fields when they decoded, then the connection closes."""
        assert self._protocol is not None
        if exc.header is None or exc.header.type is not _ONEWAY:
            answer = error_answer(exc, _HEADER, self._protocol)
            if answer is not None:
                self._table.stats.calls += 1
                self._table.stats.errors += 1
                self._write_bytes(answer)
        self._close(f"bad THeader frame ({exc})")

    def _answer_skipped(self) -> None:
        """Answer the framed or THeader calls over max_frame_size that the reader skipped
        unread (THeader ones in a frame echoing theirs)."""
        assert self._reader is not None
        table = self._table
        for skipped in self._reader.take_skipped():
            header, size = skipped.header, skipped.size
            table.stats.calls += 1
            table.stats.oversized_calls += 1
            limit = self._limits.max_frame_size
            table.oversized_log.warning(
                "client %s sent %s (seqid %d) of %d bytes, over max_frame_size %d; "
                "answered PROTOCOL_ERROR",
                self._peer(), header.name, header.seqid, size, limit,
            )  # fmt: skip
            if header.type is not _ONEWAY:
                self._write_error(
                    header,
                    f"gateway: call of {size} bytes exceeds max_frame_size {limit}",
                    skipped.frame,
                )

    def _write_error(
        self, header: MessageHeader, text: str, frame: HeaderInfo | None = None
    ) -> None:
        """Answer ``header``'s call with a PROTOCOL_ERROR made here (counted as an error)."""
        assert self._protocol is not None
        self._table.stats.errors += 1
        self._write(
            application_exception(
                self._protocol, header.method, header.seqid, PROTOCOL_ERROR, text
            ),
            frame,
        )

    # -- dispatching, within max_pipelined -------------------------------------------------

    def _accept(self, call: Call) -> None:
        """Dispatch now, or hold while max_pipelined calls are underway (or others wait)."""
        if self._held or len(self._pending) >= self._max_pipelined:
            self._held.append(call)
        else:
            self._dispatch(*call)

    def _pump(self) -> None:
        """Dispatch held calls while below max_pipelined, then read again if nothing holds
        us back; hang up once closing and everything is answered."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._held and len(self._pending) < self._max_pipelined:
                self._dispatch(*self._held.popleft())
        finally:
            self._pumping = False
        if self._closing:
            if not self._pending and not self._held:
                self._hang_up()  # the last call pipelined before the bad bytes is answered
        else:
            self._update_reading()

    def _dispatch(
        self, message: bytes, header: MessageHeader | None = None, frame: HeaderInfo | None = None
    ) -> None:
        assert self._protocol is not None
        with client_scope(self):  # its backend calls count against this connection's share
            d = self._handler.handle(message, self._protocol, header, frame, self._peer_id)
        self._pending.add(d)

        def reply(result: bytes | Failure | None) -> None:
            self._pending.discard(d)
            if isinstance(result, Failure):
                if isinstance(result.value, CancelledError):
                    return None
                if isinstance(result.value, MalformedMessage):
                    self._close(f"unreadable message header ({result.getErrorMessage()})")
                    return None
                log.error("call handler failed: %s", result.getTraceback())
                return None
            if result is not None:
                self._write(result, frame)
            if self._held or not self._reading or self._closing:
                self._pump()
            if self._layers:
                self._layers_idle()
            return None

        d.addBoth(reply)
        # Added after reply(): a drain waiting on the pool resumes only once the reply is written.
        self._calls.add(d)

    # -- backpressure ----------------------------------------------------------------------

    def pauseProducing(self) -> None:
        """The transport's buffer holds over max_unsent_bytes: stop reading calls."""
        if not self._unsent_full:
            self._unsent_full = True
            self._update_reading()

    def resumeProducing(self) -> None:
        """The transport's buffer drained: read calls again (unless max_pipelined holds)."""
        if self._unsent_full:
            self._unsent_full = False
            self._update_reading()

    def stopProducing(self) -> None:
        """The transport is gone; connectionLost follows and cleans up."""

    def _update_reading(self) -> None:
        transport: Any = self.transport
        if self._hung_up or transport is None:
            return
        if self._unsent_full:
            reason: str | None = "unsent"
        elif self._held or len(self._pending) >= self._max_pipelined:
            reason = "pipelined"
        else:
            reason = None
        if reason is not None and self._reading:
            self._reading = False
            transport.pauseProducing()
            self._table.paused(self, reason, self._peer())
        elif reason is None and not self._reading:
            self._reading = True
            transport.resumeProducing()
            self._table.resumed(self)

    # -- writing and closing ---------------------------------------------------------------

    def _write(self, message: bytes, frame: HeaderInfo | None = None) -> None:
        """Write ``message`` in the connection's dialect; ``frame`` is the THeader frame of
        the call it answers (its fields are echoed), None on framed/buffered connections."""
        if frame is not None and frame.transforms and self._table.limits.header_zlib_replies:
            self._write_bytes(reply_frame(message, frame, transforms=frame.transforms))
        elif self._transport_kind is not None:
            self._write_bytes(encode(self._transport_kind, message, frame))

    def _write_bytes(self, data: bytes) -> None:
        if self._layers:
            data = wrap(self._layers, data)
        self._write_raw(data)

    def _write_raw(self, data: bytes) -> None:
        if self.transport is not None and not self._hung_up and data:
            send_now(self.transport, data)

    def _close(self, why: str, quiet: bool = False) -> None:
        """Stop reading now; hang up once the calls already dispatched are answered."""
        if not self._closing:
            if not quiet:
                log.warning("closing client %s: %s", self._peer(), why)
            self._closing = True
            if not self._pending and not self._held:
                self._hang_up()

    def _hang_up(self, abort: bool = False) -> None:
        transport: Any = self.transport
        if transport is None or (self._hung_up and not abort):
            return
        if self._layers and not abort:
            self._layers_idle()  # an HTTP response still owed goes out first
        self._hung_up = True
        if self._producing:
            # A registered producer keeps loseConnection waiting for it: unregister first.
            self._producing = False
            transport.unregisterProducer()
        if abort:
            transport.abortConnection()
        else:
            transport.loseConnection()

    def busy(self) -> bool:
        """A call of this connection is dispatched or waiting to be (never idle then)."""
        return bool(self._pending or self._held)

    def close_idle(self, abort: bool) -> None:
        """Close for idleness (the table's sweep); ``abort`` when the graceful close is stuck
        behind replies the client does not read."""
        self._closing = True
        self._hang_up(abort=abort)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Drop only this client's waiters; the Coalescer keeps shared calls for the others.
        self._held.clear()
        pending, self._pending = self._pending, set()
        for d in pending:
            d.cancel()
        self._table.closed(self)


class GatewayFactory(Factory):
    def __init__(
        self,
        handler: CallHandler,
        limits: Limits,
        calls: DeferredPool,
        *,
        clock: Any,
        stats: NodeStats,
        client_limits: ClientLimits = DEFAULT_CLIENT_LIMITS,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.calls = calls
        self.connections = ConnectionTable(client_limits, stats, clock)

    def startFactory(self) -> None:
        self.connections.start()

    def stopFactory(self) -> None:
        self.connections.stop()

    def buildProtocol(self, addr: IAddress | None) -> ClientConnection | None:
        # None makes the listening port close the new socket at once.
        if not self.connections.admit(_address(addr)):
            return None
        return ClientConnection(self.handler, self.limits, self.calls, self.connections)


def _address(addr: IAddress | None) -> str:
    return f"{getattr(addr, 'host', '?')}:{getattr(addr, 'port', '?')}"
