"""Unframed ("buffered transport") Thrift server protocol for Twisted.

``thrift.transport.TTwisted`` only speaks the framed transport. Unframed messages carry no
length, so the only way to find where one ends is to parse it; the gateway's own
:class:`gateway.thrift.MessageReader` does that (incrementally, with its size, depth and
collection limits). A complete message is handed to the generated processor exactly as
TTwisted would, and the reply is written back without a frame. Bytes that cannot be a
message (:class:`gateway.thrift.WireError`) end the connection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from thrift.transport import TTransport
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.thrift import MessageReader, ProtocolKind, TransportKind, WireError


class ThriftProcessor(Protocol):
    """What TTwisted expects of a processor: ``process`` returns a Deferred."""

    def process(self, iprot: Any, oprot: Any) -> Deferred[Any]: ...


def _untyped(provider: object) -> Any:
    """Zope interface methods are declared without ``self``; without the mypy-zope plugin
    mypy reads their signatures wrong, so calls through an interface type go untyped."""
    return provider


class Serial:
    """Runs one connection's jobs one at a time, in arrival order: what Apache Thrift's
    servers (TThreadedServer, TThreadPoolServer, TNonblockingServer) and thriftpy2's do with
    a connection's calls, so a call pipelined behind a slow one waits for it."""

    def __init__(self) -> None:
        self._waiting: deque[Callable[[], Deferred[Any]]] = deque()
        self._busy = self._pumping = False

    def run(self, job: Callable[[], Deferred[Any]]) -> None:
        self._waiting.append(job)
        self._pump()

    def _pump(self) -> None:
        # A job that completes at once starts the next from this loop, not from inside its
        # own callback: a long pipeline of instant calls must not nest.
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._waiting and not self._busy:
                self._busy = True
                self._waiting.popleft()().addBoth(self._done)
        finally:
            self._pumping = False

    def _done(self, _: object) -> None:
        self._busy = False
        self._pump()


class BufferedThriftProtocol(TwistedProtocol):
    """One connection: split unframed messages, process each, write replies unframed.

    ``in_order`` (the default): one call at a time, replies in call order, as Apache Thrift's
    servers answer. Otherwise, like TTwisted's ThriftServerProtocol, messages are processed
    concurrently, so replies go out in completion order (a fast ``backendStats`` overtakes a
    slow ``alertSupervisor`` sent before it); clients match replies by seqid.
    """

    _log = Logger()

    def __init__(
        self,
        processor: ThriftProcessor,
        iprot_factory: Any,
        oprot_factory: Any,
        protocol: ProtocolKind,
        in_order: bool = True,
    ) -> None:
        self._processor = processor
        self._iprot_factory = iprot_factory
        self._oprot_factory = oprot_factory
        self._reader = MessageReader(TransportKind.BUFFERED, protocol)
        self._closing = False
        self._serial = Serial() if in_order else None

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            messages = self._reader.feed(data)
        except WireError as exc:
            for message in exc.complete:  # whole calls ahead of the bad bytes still count
                self._process(message)
            self._drop(f"undecodable input ({type(exc).__name__}: {exc})")
            return
        for message in messages:
            self._process(message)

    def _process(self, message: bytes) -> None:
        if self._serial is not None:
            self._serial.run(lambda: self._process_now(message))
        else:
            self._process_now(message)

    def _process_now(self, message: bytes) -> Deferred[None]:
        tmo = TTransport.TMemoryBuffer()
        iprot = self._iprot_factory.getProtocol(TTransport.TMemoryBuffer(message))
        oprot = self._oprot_factory.getProtocol(tmo)
        d = maybeDeferred(self._processor.process, iprot, oprot)
        d.addCallbacks(self._reply, self._failed, callbackArgs=(tmo,))
        return d

    def _reply(self, _: object, tmo: Any) -> None:
        reply: bytes = tmo.getvalue()
        # Oneway calls produce no bytes; a closed transport ignores writes.
        if reply and self.transport is not None:
            _untyped(self.transport).write(reply)

    def _failed(self, failure: Failure) -> None:
        self._drop(f"processing failed: {failure.getErrorMessage()}")

    def _drop(self, why: str) -> None:
        self._closing = True
        self._log.warn("closing connection: {why}", why=why)
        if self.transport is not None:
            _untyped(self.transport).loseConnection()


class BufferedThriftFactory(Factory):
    """Server factory for :class:`BufferedThriftProtocol` (the unframed twin of TTwisted's)."""

    def __init__(
        self,
        processor: ThriftProcessor,
        iprot_factory: Any,
        oprot_factory: Any,
        protocol: ProtocolKind,
        in_order: bool = True,
    ) -> None:
        self.processor = processor
        self.iprot_factory = iprot_factory
        self.oprot_factory = oprot_factory
        self.thrift_protocol = protocol
        self.in_order = in_order

    def buildProtocol(self, addr: IAddress | None) -> BufferedThriftProtocol:
        proto = BufferedThriftProtocol(
            self.processor,
            self.iprot_factory,
            self.oprot_factory,
            self.thrift_protocol,
            self.in_order,
        )
        proto.factory = self
        return proto
