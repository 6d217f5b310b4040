"""Unframed ("buffered transport") Thrift server protocol for Twisted.

``thrift.transport.TTwisted`` only speaks the framed transport. Unframed messages carry no
length, so the only way to find where one ends is to parse it: every time bytes arrive we try
to skip one whole message over a ``TMemoryBuffer`` of what we have; running out of bytes
(``EOFError``) just means "wait for more". A complete message is handed to the generated
processor exactly as TTwisted would, and the reply is written back without a frame.

Re-parsing from the start on every chunk is quadratic in the number of *fields* of a message
split into many chunks (strings are skipped by length, not byte by byte); that is fine for an
example backend whose messages are a few hundred bytes.
"""

from __future__ import annotations

from typing import Any, Protocol

from thrift.protocol.TProtocol import TProtocolException
from thrift.Thrift import TType
from thrift.transport import TTransport
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

MAX_MESSAGE_SIZE = 16 * 1024 * 1024
MAX_DEPTH = 64


class ThriftProcessor(Protocol):
    """What TTwisted expects of a processor: ``process`` returns a Deferred."""

    def process(self, iprot: Any, oprot: Any) -> Deferred[Any]: ...


def message_length(data: bytes, protocol_factory: Any) -> int | None:
    """Byte length of the first whole message in ``data``; ``None`` while it is incomplete.

    Raises ``TProtocolException`` or ``TTransportException`` (thrift's length limits), or
    ``UnicodeDecodeError`` for a garbled method name, when the bytes cannot be a message of
    this protocol at all.
    """
    trans = TTransport.TMemoryBuffer(data)
    prot = protocol_factory.getProtocol(trans)
    try:
        prot.readMessageBegin()
        skip(prot, TType.STRUCT, MAX_DEPTH)
        prot.readMessageEnd()
    except EOFError:
        return None
    position: int = trans.cstringio_buf.tell()
    return position


def skip(prot: Any, ttype: int, depth: int) -> None:
    """Skip one value like ``TProtocolBase.skip``, but never decode strings.

    The stock skip reads strings with ``readString``, which fails on binary fields that are
    not UTF-8; boundaries only need the bytes skipped.
    """
    if depth <= 0:
        raise TProtocolException(TProtocolException.DEPTH_LIMIT, "nesting too deep")
    if ttype == TType.STRUCT:
        prot.readStructBegin()
        while True:
            _, ftype, _ = prot.readFieldBegin()
            if ftype == TType.STOP:
                break
            skip(prot, ftype, depth - 1)
            prot.readFieldEnd()
        prot.readStructEnd()
    elif ttype == TType.MAP:
        ktype, vtype, size = prot.readMapBegin()
        for _ in range(size):
            skip(prot, ktype, depth - 1)
            skip(prot, vtype, depth - 1)
        prot.readMapEnd()
    elif ttype in (TType.SET, TType.LIST):
        begin, end = (
            (prot.readSetBegin, prot.readSetEnd)
            if ttype == TType.SET
            else (prot.readListBegin, prot.readListEnd)
        )
        etype, size = begin()
        for _ in range(size):
            skip(prot, etype, depth - 1)
        end()
    elif ttype == TType.STRING:
        prot.readBinary()
    elif ttype in _SCALAR_READERS:
        getattr(prot, _SCALAR_READERS[ttype])()
    else:
        raise TProtocolException(TProtocolException.INVALID_DATA, f"unknown field type {ttype}")


_SCALAR_READERS = {
    TType.BOOL: "readBool",
    TType.BYTE: "readByte",
    TType.I16: "readI16",
    TType.I32: "readI32",
    TType.I64: "readI64",
    TType.DOUBLE: "readDouble",
    TType.UUID: "readUuid",
}


def _untyped(provider: object) -> Any:
    """Zope interface methods are declared without ``self``; without the mypy-zope plugin
    mypy reads their signatures wrong, so calls through an interface type go untyped."""
    return provider


class BufferedThriftProtocol(TwistedProtocol):
    """One connection: split unframed messages, process each, write replies unframed.

    Like TTwisted's ThriftServerProtocol, messages are processed concurrently, so replies go
    out in completion order (a fast ``backendStats`` overtakes a slow ``alertSupervisor``
    sent before it); clients match replies by seqid.
    """

    _log = Logger()

    def __init__(self, processor: ThriftProcessor, iprot_factory: Any, oprot_factory: Any) -> None:
        self._processor = processor
        self._iprot_factory = iprot_factory
        self._oprot_factory = oprot_factory
        self._buffer = b""
        self._closing = False

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        while self._buffer:
            try:
                length = message_length(self._buffer, self._iprot_factory)
            except Exception as exc:  # any parse failure means garbage input
                self._drop(f"undecodable input ({type(exc).__name__}: {exc})")
                return
            if length is None:
                if len(self._buffer) > MAX_MESSAGE_SIZE:
                    self._drop(f"message larger than {MAX_MESSAGE_SIZE} bytes")
                return
            message, self._buffer = self._buffer[:length], self._buffer[length:]
            self._process(message)

    def _process(self, message: bytes) -> None:
        tmo = TTransport.TMemoryBuffer()
        iprot = self._iprot_factory.getProtocol(TTransport.TMemoryBuffer(message))
        oprot = self._oprot_factory.getProtocol(tmo)
        d = maybeDeferred(self._processor.process, iprot, oprot)
        d.addCallbacks(self._reply, self._failed, callbackArgs=(tmo,))

    def _reply(self, _: object, tmo: Any) -> None:
        reply: bytes = tmo.getvalue()
        # Oneway calls produce no bytes; a closed transport ignores writes.
        if reply and self.transport is not None:
            _untyped(self.transport).write(reply)

    def _failed(self, failure: Failure) -> None:
        self._drop(f"processing failed: {failure.getErrorMessage()}")

    def _drop(self, why: str) -> None:
        self._closing = True
        self._buffer = b""
        self._log.warn("closing connection: {why}", why=why)
        if self.transport is not None:
            _untyped(self.transport).loseConnection()


class BufferedThriftFactory(Factory):
    """Server factory for :class:`BufferedThriftProtocol` (the unframed twin of TTwisted's)."""

    def __init__(self, processor: ThriftProcessor, iprot_factory: Any, oprot_factory: Any) -> None:
        self.processor = processor
        self.iprot_factory = iprot_factory
        self.oprot_factory = oprot_factory

    def buildProtocol(self, addr: IAddress | None) -> BufferedThriftProtocol:
        proto = BufferedThriftProtocol(self.processor, self.iprot_factory, self.oprot_factory)
        proto.factory = self
        return proto
