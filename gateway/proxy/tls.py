"""TLS on the client port: a second listener (``tls_listen``) whose certificates reload live.

Why a separate listener rather than telling TLS from plain Thrift apart by the first byte on
one port: a TLS ClientHello starts with 0x16, which is also a plausible first byte of a
framed or buffered Thrift call, so one port would have to guess on every connection; and
with a separate port a firewall, a load balancer or ``ss`` can see at a glance which
clients are encrypted, and mTLS can be required on it without touching the plain port.

The listener wraps the same :class:`~gateway.proxy.server.GatewayFactory` as the plain one
in Twisted's ``TLSMemoryBIOFactory`` (pyOpenSSL), so everything after decryption is the
plain path: limits, backpressure, dialect detection, coalescing.

Reload: every new connection gets an ``SSL.Connection`` of the *current* context
(:meth:`ReloadableServerTLS.serverConnectionForTLS`); a SIGHUP loads the files again and
swaps the context. Connections already open keep the context they were made with, so a
certificate rotation drops nothing.

Identity (``key_peer``): :func:`peer_identity` is the DER of the verified client
certificate's issuer and subject names, read once per connection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IAddress, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import ConfigError, ServerTLS
from gateway.proxy.connections import RateLimitedLog

log = logging.getLogger("gateway.tls")

MIN_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None


def load_certificates(path: str, what: str) -> list[crypto.X509]:
    """Every certificate of the PEM file at ``path`` (ConfigError naming ``what``)."""
    data = _read(path, what)  # outside the try: ConfigError is a ValueError too
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"{what} {path}: not a PEM certificate file ({exc})") from None
    return [crypto.X509.from_cryptography(cert) for cert in certs]


def load_key(path: str, what: str) -> crypto.PKey:
    """The (unencrypted) PEM private key at ``path``."""
    data = _read(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{what} {path}: not an unencrypted PEM private key ({exc})") from None
    return crypto.PKey.from_cryptography_key(key)  # type: ignore[arg-type]  # any usable key


@dataclass(frozen=True)
class ServerCertificate:
    """A loaded client-port context and what /healthz shows of its certificate."""

    context: SSL.Context
    subject: str  # RFC 4514, e.g. "CN=gateway.example,O=Example"
    not_after: str  # ISO 8601, UTC

    def health(self) -> dict[str, object]:
        return {"cert_subject": self.subject, "cert_not_after": self.not_after}


def server_context(cfg: ServerTLS) -> SSL.Context:
    """An OpenSSL context for ``cfg``, its files read now; ConfigError if they are unusable."""
    return load_server(cfg).context


def load_server(cfg: ServerTLS) -> ServerCertificate:
    """:func:`server_context`, with its certificate's subject and expiry."""
    chain = load_certificates(cfg.cert, "gateway.tls_cert")
    key = load_key(cfg.key, "gateway.tls_key")
    client_cas = load_certificates(cfg.client_ca, "gateway.tls_client_ca") if cfg.client_ca else []
    options = CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        # mTLS: a client certificate signed by one of these is required, else no handshake.
        verify=bool(client_cas),
        caCerts=client_cas or None,
        requireCertificate=bool(client_cas),
        raiseMinimumTo=MIN_VERSIONS[cfg.min_version],
    )
    try:
        context: SSL.Context = options.getContext()
        context.check_privatekey()
    except SSL.Error as exc:
        raise ConfigError(f"gateway.tls_key {cfg.key}: does not match tls_cert ({exc})") from None
    leaf = chain[0].to_cryptography()
    not_after = leaf.not_valid_after_utc.isoformat(timespec="seconds")
    return ServerCertificate(context, leaf.subject.rfc4514_string(), not_after)


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """Makes each new connection's ``SSL.Connection`` from the context loaded last."""

    def __init__(self, cfg: ServerTLS) -> None:
        self.config = cfg
        self.current = load_server(cfg)

    def prepare(self, cfg: ServerTLS) -> ServerCertificate:
        """Load ``cfg``'s files (ConfigError if unusable) without applying them."""
        return load_server(cfg)

    def apply(self, cfg: ServerTLS, loaded: ServerCertificate) -> None:
        """New connections use ``loaded`` from now on; open ones keep their context."""
        self.config, self.current = cfg, loaded

    def health(self) -> dict[str, object]:
        return {**self.current.health(), "client_certificates": self.config.client_ca is not None}

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.current.context, None)


class _ClientTLS(BufferingTLSTransport):
    """A client's TLS layer: one (rate-limited) line when its handshake fails, and the
    gateway's ``max_unsent_bytes`` applied to the socket underneath."""

    factory: TLSServerFactory

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)  # type: ignore[no-untyped-call]  # untyped in Twisted
        # ClientConnection sets bufferSize on its transport (this wrapper) to pause reading
        # once that many reply bytes wait unsent; the bytes wait in the TCP transport below.
        size = self.__dict__.get("bufferSize")
        if size is not None:
            transport.bufferSize = size

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # The TLS layer keeps its own error; ``reason`` is the socket's (see the base class).
        why = self._reason or reason
        if not self._handshakeDone and isinstance(why.value, SSL.Error):
            below: Any = self.transport
            peer = below.getPeer() if below is not None else None
            self.factory.refusals.warning(
                "client %s:%s: TLS handshake failed: %s",
                getattr(peer, "host", "?"),
                getattr(peer, "port", "?"),
                describe_ssl_error(why.value),
            )
        super().connectionLost(reason)


class TLSServerFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` around the client factory; a connection the client factory
    refuses (``max_connections``) is closed at once, as on the plain listener."""

    protocol = _ClientTLS

    def __init__(self, creator: ReloadableServerTLS, wrapped: Any, clock: Any) -> None:
        super().__init__(creator, False, wrapped, clock)  # type: ignore[arg-type]  # zope
        self.refusals = RateLimitedLog(clock, logger=log)

    def buildProtocol(self, addr: IAddress | None) -> Any:
        inner = self.wrappedFactory.buildProtocol(addr)
        return None if inner is None else self.protocol(self, inner)


def describe_ssl_error(error: BaseException) -> str:
    """One line from an OpenSSL error (its reason strings), not the nested tuple repr."""
    mismatched = getattr(error, "errors", None)  # service_identity's VerificationError
    if isinstance(mismatched, list) and mismatched:
        ids = [getattr(e, "mismatched_id", e) for e in mismatched]
        names = [getattr(i, "hostname", None) or getattr(i, "ip", None) or i for i in ids]
        shown = ", ".join(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        return f"the certificate is not valid for {shown}"
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        reasons = [str(entry[-1]) for entry in error.args[0] if entry]
        if reasons:
            return "; ".join(reasons)
    return str(error) or type(error).__name__


def peer_identity(transport: Any) -> bytes:
    """The verified client certificate of a connection as key bytes: the DER of its issuer
    and subject names, each length-prefixed; ``b""`` for plain or anonymous connections.

    The issuer is included so two CAs in one ``tls_client_ca`` bundle that issue the same
    subject name to different parties still give two identities.
    """
    get = getattr(transport, "getPeerCertificate", None)
    cert = get() if get is not None else None
    if cert is None:
        return b""
    parsed = cert.to_cryptography()
    parts = (parsed.issuer.public_bytes(), parsed.subject.public_bytes())  # DER
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)
