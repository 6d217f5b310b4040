"""TLS to backends (``[backends.X] tls = true``): the endpoint an upstream pool connects with.

:func:`backend_endpoint` is the pool's only hook: plain TCP, or TCP + TLS. The server's
certificate is always verified - against ``tls_ca`` (or the system's trust store) and for
``tls_server_name`` (or the configured host, an IP address checked as one) - and a client
certificate is presented when ``tls_cert``/``tls_key`` are set.

A connection counts as made only once its handshake is done (:class:`_Handshake`): a pool
never sends a call on a connection whose TLS might still fail, and a failed handshake fails
the connection attempt with :class:`~gateway.errors.BackendTLSFailed` - so the pool treats it
like an unreachable backend (retried with backoff, calls failing fast meanwhile) and callers
get that error, not a "connection lost mid-call". The handshake gets ``connect_timeout``:
a plain Thrift server on a TLS backend's port would otherwise leave it waiting forever.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IAddress, IHandshakeListener, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import BackendTLS, GatewayConfig
from gateway.errors import BackendTLSFailed
from gateway.proxy.silence import drop_when_silent
from gateway.proxy.tls import (
    MIN_VERSIONS,
    describe_ssl_error,
    load_certificates,
    load_key,
    server_context,
)


def client_creator(tls: BackendTLS, host: str, where: str) -> Any:
    """The pyOpenSSL connection creator for a backend (files read now; ConfigError if bad)."""
    trust = (
        _ssl.trustRootFromCertificates(
            [_certificate(c) for c in load_certificates(tls.ca, f"{where}.tls_ca")]
        )
        if tls.ca
        else _ssl.platformTrust()
    )
    client = None
    extra: dict[str, Any] = {"raiseMinimumTo": MIN_VERSIONS["1.2"]}
    if tls.cert and tls.key:
        chain = load_certificates(tls.cert, f"{where}.tls_cert")
        key = _ssl.KeyPair(load_key(tls.key, f"{where}.tls_key"))
        client = _ssl.PrivateCertificate.fromCertificateAndKeyPair(_certificate(chain[0]), key)
        extra["extraCertChain"] = chain[1:]
    return _ssl.optionsForClientTLS(
        tls.server_name or host,
        trustRoot=trust,
        clientCertificate=client,
        extraCertificateOptions=extra,
    )


# Any: twisted.internet.ssl is untyped (and its zope interfaces confuse mypy).
_ssl: Any = ssl


TLS13_GRACE = 0.25  # seconds a TLS 1.3 connection waits for a refusal of our certificate


def check_tls_files(config: GatewayConfig) -> None:
    """Read every certificate and key file ``config`` names, as ``gateway serve`` would at
    startup (backends first, then the client port): ConfigError for the first unusable one."""
    for name, backend in config.backends.items():
        tls = backend.tls_options
        if tls is not None:
            client_creator(tls, backend.address.host, f"backends.{name}")
    if config.tls is not None:
        server_context(config.tls)


def _certificate(cert: Any) -> Any:
    return _ssl.Certificate(cert)


def backend_endpoint(reactor: Any, host: str, port: int, timeout: float, tls: Any = None) -> Any:
    """How a pool reaches ``host:port``: ``tls`` is None (plain) or a :func:`client_creator`."""
    tcp = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if tls is None:
        return tcp
    return TLSClientEndpoint(reactor, tcp, tls, f"{host}:{port}", timeout)


@implementer(IStreamClientEndpoint)
class TLSClientEndpoint:
    """TCP, then a TLS handshake; ``connect`` fires with the protocol once it is done."""

    def __init__(self, reactor: Any, tcp: Any, creator: Any, address: str, timeout: float):
        self._reactor, self._tcp, self._creator = reactor, tcp, creator
        self._address, self._timeout = address, timeout

    def connect(self, factory: Any) -> Any:
        # Cancelled (the pool stops) while the handshake runs: drop that connection too.
        done: Deferred[Any] = Deferred(lambda _: gate.abort())
        gate: Any = _GateFactory(factory, done, self)
        tls = _BackendTLSFactory(self._creator, True, gate, self._reactor)
        connecting = self._tcp.connect(tls)
        # A refused or timed-out TCP connect fails here as for plain backends; otherwise the
        # result is the handshake's.
        connecting.addCallbacks(lambda _: done, lambda failure: failure)
        return connecting

    def handshake_failed(self, why: str) -> BackendTLSFailed:
        address = self._address
        return BackendTLSFailed(f"gateway: TLS handshake with backend {address} failed: {why}")


class _BackendTLS(BufferingTLSTransport):
    """Twisted's TLS client layer, telling the gate when the server sends anything after
    the handshake (see :meth:`_Handshake.handshakeCompleted`)."""

    def dataReceived(self, data: bytes) -> None:
        after_handshake = self._handshakeDone
        super().dataReceived(data)  # type: ignore[no-untyped-call]  # untyped in Twisted
        gate: Any = self.wrappedProtocol
        # An alert ends the TLS connection here, though connectionLost comes only later.
        refused = self._lostTLSConnection or self._reason is not None
        if after_handshake and not refused and isinstance(gate, _Handshake):
            gate.server_spoke()


class _BackendTLSFactory(TLSMemoryBIOFactory):
    protocol = _BackendTLS


class _GateFactory(Factory):
    def __init__(self, app: Any, done: Deferred[Any], endpoint: TLSClientEndpoint):
        self._app, self._done, self._endpoint = app, done, endpoint
        self._built: _Handshake | None = None

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        app = self._app.buildProtocol(addr)
        if app is None:
            return None
        self._built = _Handshake(app, self._done, self._endpoint)
        return self._built

    def abort(self) -> None:
        transport: Any = self._built.transport if self._built is not None else None
        if transport is not None:
            transport.abortConnection()


@implementer(IHandshakeListener)
class _Handshake(Protocol):
    """Between the TLS layer and the pool's connection: connects it once the handshake is
    done, fails ``done`` with BackendTLSFailed if it never is."""

    def __init__(self, app: Any, done: Deferred[Any], endpoint: TLSClientEndpoint):
        # Any: zope interfaces confuse mypy without the mypy-zope plugin.
        self._app, self._done, self._endpoint = app, done, endpoint
        self._timer: Any = None
        self._open = False

    def connectionMade(self) -> None:
        tls: Any = self.transport
        # The pool's connection asks its transport for the socket to set the kernel's
        # silence timeouts; under TLS that transport is the TLS layer, so they are set here.
        drop_when_silent(tls.transport, self._endpoint._timeout)
        reactor = self._endpoint._reactor
        self._timer = reactor.callLater(self._endpoint._timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(f"no handshake within {self._endpoint._timeout:g}s")
        tls: Any = self.transport
        tls.abortConnection()

    def handshakeCompleted(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._done.called:
            return
        tls: Any = self.transport
        if tls.getHandle().get_protocol_version_name() == "TLSv1.3":
            # In TLS 1.3 the client's handshake is done before the server has checked the
            # client's certificate: a server refusing it says so in an alert a round trip
            # later. Wait for the server's next record (an alert, or the session tickets
            # servers send at once), at most TLS13_GRACE, before sending calls on it.
            grace = min(TLS13_GRACE, self._endpoint._timeout)
            self._timer = self._endpoint._reactor.callLater(grace, self._accept)
            return
        self._accept()

    def server_spoke(self) -> None:
        """The server sent a record after the handshake, and it was no alert."""
        if self._timer is not None and not self._open:
            self._timer.cancel()
            self._timer = None
            self._accept()

    def _accept(self) -> None:
        self._timer = None
        if self._done.called:
            return
        self._open = True
        self._app.makeConnection(self.transport)
        self._done.callback(self._app)

    def dataReceived(self, data: bytes) -> None:
        if self._open:
            self._app.dataReceived(data)

    def _fail(self, why: str) -> None:
        if not self._done.called:
            self._done.errback(self._endpoint.handshake_failed(why))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._open:
            self._app.connectionLost(reason)
        else:
            self._fail(describe_ssl_error(reason.value or Exception("closed")))
