"""Twisted client endpoints for a :class:`~gateway.redis.url.RedisURL` (TCP, TLS, UNIX).

Apart from url.py so that parsing a URL (config validation, ``gateway status``) does not
import Twisted's TLS stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from zope.interface import implementer

from gateway.redis.url import RedisURL


def client_endpoint(url: RedisURL, reactor: Any, timeout: float = 5.0) -> IStreamClientEndpoint:
    """A client endpoint for ``url``; ``reactor`` provides TCP (or UNIX) and time."""
    if url.unix_path is not None:
        unix = UNIXClientEndpoint(reactor, url.unix_path, timeout=timeout)  # type: ignore[no-untyped-call]  # untyped in Twisted
        return cast(IStreamClientEndpoint, unix)
    # mypy does not see zope's @implementer, hence the casts to the interfaces.
    tcp = cast(IStreamClientEndpoint, HostnameEndpoint(reactor, url.host, url.port, timeout))
    if not url.tls:
        return tcp
    return wrapClientTLS(_tls_creator(url), tcp)


def _tls_creator(url: RedisURL) -> IOpenSSLClientConnectionCreator:
    if not url.verify:
        return cast(IOpenSSLClientConnectionCreator, _UnverifiedTLS(url.host))
    trust = None
    if url.ca_certs is not None:
        trust = ssl.Certificate.loadPEM(Path(url.ca_certs).read_bytes())
    return ssl.optionsForClientTLS(url.host, trustRoot=trust)


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedTLS:
    """TLS without certificate checks (``ssl_cert_reqs=none``): encrypts, proves nothing."""

    def __init__(self, hostname: str) -> None:
        self._hostname = hostname.encode("idna")
        self._options = ssl.CertificateOptions(verify=False)

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._options.getContext(), None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(self._hostname)  # SNI, for proxies that route on it
        connection.set_connect_state()
        return connection
