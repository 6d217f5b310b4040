"""``gateway example-backend``: a real Thrift server for the example services.

Framed transport uses thrift's own ``TTwisted.ThriftServerFactory``; buffered transport uses
:mod:`gateway.examples.buffered`, since TTwisted has no unframed server. Either way the
generated py:twisted ``Processor`` does the work, wrapped in :class:`SafeProcessor`.

By default a connection's calls are answered one at a time, in order, as the servers most
Thrift backends run do (Apache's TThreadedServer and friends, thriftpy2's): a call pipelined
behind a slow one waits for it. ``concurrent`` (``--concurrent``) is TTwisted's own behaviour:
every call is processed at once and replies go out in completion order.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, cast

from thrift.protocol.TBinaryProtocol import TBinaryProtocolAcceleratedFactory
from thrift.protocol.TCompactProtocol import TCompactProtocolAcceleratedFactory
from thrift.protocol.TProtocol import TProtocolException
from thrift.Thrift import TApplicationException
from thrift.TMultiplexedProcessor import TMultiplexedProcessor
from thrift.transport import TTransport, TTwisted
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from gateway.config import parse_address
from gateway.examples.buffered import BufferedThriftFactory, Serial, ThriftProcessor
from gateway.examples.gen.poetry import Poetry
from gateway.examples.gen.supervisor import Supervisor
from gateway.examples.handlers import PoetryHandler, SupervisorHandler
from gateway.thrift import (
    MessageType,
    ProtocolKind,
    WireError,
    application_exception,
    read_header,
)

PROTOCOL_FACTORIES = {
    "binary": TBinaryProtocolAcceleratedFactory,
    "compact": TCompactProtocolAcceleratedFactory,
}

# --service value -> (Thrift service name used by TMultiplexedProtocol, generated module)
SERVICES: dict[str, tuple[str, Any]] = {
    "supervisor": ("Supervisor", Supervisor),
    "poetry": ("Poetry", Poetry),
}


class SafeProcessor:
    """Answers processing failures with a ``TApplicationException`` instead of hanging up.

    The generated processors already turn handler exceptions (declared or not) into replies.
    What they do not cover - an unknown service under ``TMultiplexedProcessor``, a plain call
    to a multiplexed server, args that do not decode - raises, and TTwisted's only answer to
    that is ``loseConnection()``, which a client sees as a dropped connection rather than an
    error for that call. The inner processor writes to a private buffer so a failure half
    way through a reply never leaves partial bytes ahead of the error reply.
    """

    _log = Logger()

    def __init__(self, inner: ThriftProcessor, protocol: ProtocolKind, oprot_factory: Any) -> None:
        self._inner = inner
        self._protocol = protocol
        self._oprot_factory = oprot_factory

    def process(self, iprot: Any, oprot: Any) -> Deferred[None]:
        tmo = TTransport.TMemoryBuffer()
        d = maybeDeferred(self._inner.process, iprot, self._oprot_factory.getProtocol(tmo))
        d.addCallbacks(
            self._copy_reply,
            self._answer_failure,
            callbackArgs=(tmo, oprot),
            errbackArgs=(iprot, oprot),
        )
        return d

    @staticmethod
    def _copy_reply(_: object, tmo: Any, oprot: Any) -> None:
        oprot.trans.write(tmo.getvalue())

    def _answer_failure(self, failure: Failure, iprot: Any, oprot: Any) -> Failure | None:
        # Both servers hand us a TMemoryBuffer over exactly one message, so the header can be
        # decoded again from the start whatever the failed processor had consumed.
        try:
            header = read_header(iprot.trans.getvalue(), self._protocol)
        except WireError:  # not even a header: nothing to answer, so the server hangs up
            self._log.warn("undecodable message, closing the connection: {f}", f=failure.value)
            return failure
        exc = failure.value
        self._log.warn("call {name!r} failed: {exc!r}", name=header.name, exc=exc)
        if header.type is MessageType.ONEWAY:
            return None
        if isinstance(exc, TProtocolException) and exc.type == TProtocolException.NOT_IMPLEMENTED:
            code = TApplicationException.UNKNOWN_METHOD
        elif isinstance(
            exc, TProtocolException | TTransport.TTransportException | EOFError | UnicodeDecodeError
        ):  # TTransportException: thrift's string/container length limits
            code = TApplicationException.PROTOCOL_ERROR
        else:
            code = TApplicationException.INTERNAL_ERROR
        detail = getattr(exc, "message", None) or str(exc)
        # Replies carry the bare method name, as TMultiplexedProcessor's inner processors do.
        oprot.trans.write(
            application_exception(
                self._protocol, header.method, header.seqid, code, f"{type(exc).__name__}: {detail}"
            )
        )
        return None


def build_processor(
    service: str, multiplexed: bool, handler: SupervisorHandler | PoetryHandler
) -> ThriftProcessor:
    """The generated Processor, under its service name when multiplexed."""
    name, module = SERVICES[service]
    processor: ThriftProcessor = module.Processor(handler)
    if multiplexed:
        # No registerDefault: a plain call to a multiplexed server must fail, like a real one.
        mux = TMultiplexedProcessor()
        mux.registerProcessor(name, processor)
        processor = mux
    return processor


class InOrderServerProtocol(TTwisted.ThriftServerProtocol):  # type: ignore[misc]  # untyped
    """TTwisted's framed server protocol, answering one call at a time, in order."""

    def stringReceived(self, frame: bytes) -> None:
        serial = self.__dict__.get("_serial")
        if serial is None:
            serial = self._serial = Serial()
        serial.run(lambda: self._process(frame))

    def _process(self, frame: bytes) -> Deferred[None]:
        tmo = TTransport.TMemoryBuffer()
        iprot = self.factory.iprot_factory.getProtocol(TTransport.TMemoryBuffer(frame))
        oprot = self.factory.oprot_factory.getProtocol(tmo)
        d: Deferred[None] = self.factory.processor.process(iprot, oprot)
        d.addCallbacks(self.processOk, self.processError, callbackArgs=(tmo,))
        return d


def build_factory(
    clock: IReactorTime,
    *,
    service: str,
    delay: float = 0.0,
    protocol: str = "binary",
    transport: str = "framed",
    multiplexed: bool = False,
    slow_delay: float = 2.0,
    concurrent: bool = False,
) -> Factory:
    """A server factory for one backend."""
    handler_class = SupervisorHandler if service == "supervisor" else PoetryHandler
    handler = handler_class(clock, delay, slow_delay)
    proto_factory = PROTOCOL_FACTORIES[protocol]()
    kind = ProtocolKind(protocol)
    processor = SafeProcessor(build_processor(service, multiplexed, handler), kind, proto_factory)
    if transport == "framed":
        factory: Factory = TTwisted.ThriftServerFactory(processor, proto_factory)
        if not concurrent:
            factory.protocol = InOrderServerProtocol
    else:
        factory = BufferedThriftFactory(
            processor, proto_factory, proto_factory, kind, in_order=not concurrent
        )
    factory.noisy = False  # no "Starting factory" line per listen
    return factory


def _start_logging() -> None:
    """Warnings and errors to stderr: Twisted's own log, and stdlib logging, which the
    generated processors use for handler exceptions."""
    # cast: zope interfaces confuse mypy without the mypy-zope plugin (see buffered._untyped).
    observer = FilteringLogObserver(
        cast(Any, textFileLogObserver(sys.stderr)),
        [cast(Any, LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn))],
    )
    globalLogBeginner.beginLoggingTo([cast(Any, observer)], redirectStandardIO=False)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("example-backend: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


class _OneLineFormatter(logging.Formatter):
    """The generated processors log every handler exception with a traceback; the example's
    "crash:" calls raise on purpose, so one line naming the exception is enough."""

    def formatException(self, ei: Any) -> str:
        return f"{ei[0].__name__}: {ei[1]}" if ei[0] is not None else ""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace("\n", " - ", 1)


def run_backend(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT (exit 0). Bad --listen: exit 2; cannot listen: exit 1."""
    try:
        address = parse_address(args.listen, "--listen", allow_zero=True)
    except ValueError as exc:
        print(f"example-backend: bad {exc}", file=sys.stderr)
        return 2
    host, port = address.host, address.port
    from twisted.internet import reactor as _reactor

    # Any: the reactor's zope interfaces confuse mypy without the mypy-zope plugin.
    reactor = cast(Any, _reactor)
    factory = build_factory(
        reactor,
        service=args.service,
        delay=args.delay,
        protocol=args.protocol,
        transport=args.transport,
        multiplexed=args.multiplexed,
        slow_delay=args.slow_delay,
        concurrent=args.concurrent,
    )
    try:
        # Twisted's default backlog of 50 overflows when a herd of hundreds connects at once;
        # the dropped SYNs come back only after the kernel's ~1 s retransmit.
        listening = reactor.listenTCP(port, factory, backlog=1024, interface=host)
    except CannotListenError as exc:
        print(
            f"example-backend: cannot listen on {args.listen}: {exc.socketError}", file=sys.stderr
        )
        return 1
    _start_logging()
    mode = f"{args.protocol}/{args.transport}" + ("/multiplexed" if args.multiplexed else "")
    mode += "/concurrent" if args.concurrent else "/in-order"
    bound = listening.getHost().port
    shown = f"[{host}]" if ":" in host else host
    line = f"example-backend {args.service} listening on {shown}:{bound} ({mode})"
    # reactor.run() installs SIGINT/SIGTERM handlers that stop the reactor, so both end here.
    # The line is printed once run() has installed them: a supervisor that signals us as soon
    # as it reads the line must not hit Python's default SIGTERM handler.
    reactor.callWhenRunning(print, line, flush=True)
    reactor.run()
    return 0
