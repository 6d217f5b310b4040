"""The client-facing Twisted server: one :class:`ClientConnection` per client socket.

Each connection detects its transport (framed / buffered) and protocol (binary, non-strict
binary, compact) from its first bytes, splits messages, and hands each to the shared
:class:`CallHandler`. Replies go back as they complete (Thrift clients match by seqid;
synchronous clients send one call at a time). Bad input closes only that connection.
"""

from __future__ import annotations

import logging

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from gateway.errors import PROTOCOL_ERROR
from gateway.primitives import DeferredPool
from gateway.proxy.handler import CallHandler
from gateway.reactors import as_transport
from gateway.thrift import (
    MAX_DETECT_PREFIX,
    FrameTooLarge,
    Limits,
    MalformedMessage,
    MessageHeader,
    MessageReader,
    NotThrift,
    ProtocolKind,
    TransportKind,
    WireError,
    application_exception,
    detect,
    encode,
)

log = logging.getLogger("gateway.server")


class ClientConnection(Protocol):
    def __init__(self, handler: CallHandler, limits: Limits, calls: DeferredPool) -> None:
        self._handler = handler
        self._limits = limits
        self._calls = calls
        self._prefix = b""
        self._reader: MessageReader | None = None
        self._transport_kind: TransportKind | None = None
        self._protocol: ProtocolKind | None = None
        self._pending: set[Deferred[bytes | None]] = set()
        self._closing = False  # bad input seen: read nothing more
        self._hung_up = False  # loseConnection called: write nothing more

    def _peer(self) -> str:
        if self.transport is None:
            return "?"
        peer = as_transport(self.transport).getPeer()
        return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._reader is None:
            self._prefix += data
            try:
                kinds = detect(self._prefix)
            except NotThrift as exc:
                self._close(f"not a Thrift stream ({exc})")
                return
            if kinds is None:
                if len(self._prefix) > MAX_DETECT_PREFIX:
                    self._close("could not detect the Thrift transport/protocol")
                return
            self._transport_kind, self._protocol = kinds
            self._reader = MessageReader(self._transport_kind, self._protocol, self._limits)
            data, self._prefix = self._prefix, b""
        try:
            # With their headers: the reader decoded them to split the stream, and the
            # handler would otherwise decode each one again.
            messages = self._reader.feed_parsed(data)
        except FrameTooLarge as exc:
            self._dispatch_all(exc.complete)
            self._close(f"frame too large ({exc})")
            return
        except MalformedMessage as exc:
            # Calls pipelined ahead of the bad bytes are still answered.
            self._dispatch_all(exc.complete)
            # The stream lost its message boundaries: answer the call if we know its seqid,
            # then close (later bytes cannot be trusted).
            if exc.header is not None and self._protocol is not None:
                self._write(
                    application_exception(
                        self._protocol, exc.header.method, exc.header.seqid, PROTOCOL_ERROR,
                        f"gateway: malformed message: {exc}",
                    )
                )  # fmt: skip
            self._close(f"malformed message ({exc})")
            return
        except WireError as exc:
            self._dispatch_all(exc.complete)
            self._close(f"wire error ({exc})")
            return
        for message, header in messages:
            self._dispatch(message, header)

    def _dispatch_all(self, messages: list[bytes]) -> None:
        for message in messages:
            self._dispatch(message)

    def _dispatch(self, message: bytes, header: MessageHeader | None = None) -> None:
        assert self._protocol is not None
        d = self._handler.handle(message, self._protocol, header)
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
                self._write(result)
            if self._closing and not self._pending:
                self._hang_up()  # the last call pipelined before the bad bytes is answered
            return None

        d.addBoth(reply)
        # Added after reply(): a drain waiting on the pool resumes only once the reply is written.
        self._calls.add(d)

    def _write(self, message: bytes) -> None:
        if self.transport is not None and self._transport_kind is not None and not self._hung_up:
            as_transport(self.transport).write(encode(self._transport_kind, message))

    def _close(self, why: str) -> None:
        """Stop reading now; hang up once the calls already dispatched are answered."""
        if not self._closing:
            log.warning("closing client %s: %s", self._peer(), why)
            self._closing = True
            if not self._pending:
                self._hang_up()

    def _hang_up(self) -> None:
        if not self._hung_up and self.transport is not None:
            self._hung_up = True
            as_transport(self.transport).loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Drop only this client's waiters; the Coalescer keeps shared calls for the others.
        pending, self._pending = self._pending, set()
        for d in pending:
            d.cancel()


class GatewayFactory(Factory):
    def __init__(self, handler: CallHandler, limits: Limits, calls: DeferredPool) -> None:
        self.handler = handler
        self.limits = limits
        self.calls = calls

    def buildProtocol(self, addr: IAddress | None) -> ClientConnection:
        return ClientConnection(self.handler, self.limits, self.calls)
