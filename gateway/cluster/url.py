"""Redis URLs: ``redis://``, ``rediss://`` (TLS) and ``unix://`` -> connection settings.

Accepted forms (the same as redis-py's ``from_url``, so ``gateway serve`` and
``gateway status`` take one URL)::

    redis://[[username]:password@]host[:port][/db]
    rediss://[[username]:password@]host[:port][/db][?ssl_cert_reqs=none|required&ssl_ca_certs=PATH]
    unix://[[username]:password@]/path/to/socket[?db=N]

``rediss://`` verifies the server certificate against the platform's trust store (or the
``ssl_ca_certs`` PEM file) and the host name; ``ssl_cert_reqs=none`` turns verification
off, for self-signed test setups only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from zope.interface import implementer

DEFAULT_PORT = 6379


class InvalidRedisURL(ValueError):
    """The URL cannot be turned into connection settings."""


@dataclass(frozen=True)
class RedisURL:
    """Parsed connection settings; ``str()`` never shows the password."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    verify: bool = True
    ca_certs: str | None = None
    unix_path: str | None = None

    def __str__(self) -> str:
        auth = f"{self.username or ''}:***@" if self.password is not None else ""
        if self.unix_path is not None:
            return f"unix://{auth}{self.unix_path}?db={self.db}"
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}/{self.db}"

    def endpoint(self, reactor: Any, timeout: float = 5.0) -> IStreamClientEndpoint:
        """A client endpoint for this server; ``reactor`` provides TCP (or UNIX) and time."""
        if self.unix_path is not None:
            unix = UNIXClientEndpoint(reactor, self.unix_path, timeout=timeout)  # type: ignore[no-untyped-call]  # untyped in Twisted
            return cast(IStreamClientEndpoint, unix)
        # mypy does not see zope's @implementer, hence the casts to the interfaces.
        tcp = cast(IStreamClientEndpoint, HostnameEndpoint(reactor, self.host, self.port, timeout))
        if not self.tls:
            return tcp
        return wrapClientTLS(self._tls_creator(), tcp)

    def _tls_creator(self) -> IOpenSSLClientConnectionCreator:
        if not self.verify:
            return cast(IOpenSSLClientConnectionCreator, _UnverifiedTLS(self.host))
        trust = None
        if self.ca_certs is not None:
            trust = ssl.Certificate.loadPEM(Path(self.ca_certs).read_bytes())
        return ssl.optionsForClientTLS(self.host, trustRoot=trust)


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


def parse_redis_url(url: str) -> RedisURL:
    """Parse ``url``; raises :class:`InvalidRedisURL` with the reason (never the password)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise InvalidRedisURL(
            f"unsupported Redis URL scheme {parts.scheme!r} (redis, rediss, unix)"
        )
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    db = _db(parts.path if scheme != "unix" else "", query.get("db"))
    if scheme == "unix":
        if not parts.path:
            raise InvalidRedisURL("unix:// URL needs a socket path")
        return RedisURL(db=db, username=username, password=password, unix_path=unquote(parts.path))
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise InvalidRedisURL(f"bad port in Redis URL: {exc}") from None
    cert_reqs = query.get("ssl_cert_reqs", "required").lower()
    if cert_reqs not in ("none", "optional", "required"):
        raise InvalidRedisURL(
            f"ssl_cert_reqs must be none, optional or required, not {cert_reqs!r}"
        )
    return RedisURL(
        host=parts.hostname or "127.0.0.1",
        port=port,
        db=db,
        username=username,
        password=password,
        tls=scheme == "rediss",
        verify=cert_reqs != "none",
        ca_certs=query.get("ssl_ca_certs"),
    )


def _db(path: str, query_db: str | None) -> int:
    raw = path.strip("/") or query_db or "0"
    try:
        db = int(raw)
    except ValueError:
        raise InvalidRedisURL(f"Redis database must be a number, not {raw!r}") from None
    if db < 0:
        raise InvalidRedisURL(f"Redis database must be >= 0, not {db}")
    return db
