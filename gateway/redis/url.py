"""Redis URLs -> connection settings: one server, a Sentinel-managed master, or a Cluster.

Accepted forms (the single-server ones are redis-py's ``from_url`` forms, so ``gateway
serve`` and ``gateway status`` take one URL)::

    redis://[[username]:password@]host[:port][/db]
    rediss://[[username]:password@]host[:port][/db][?ssl_cert_reqs=none|required&ssl_ca_certs=PATH]
    unix://[[username]:password@]/path/to/socket[?db=N]
    redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/master-name[/db]
                     [?sentinel_username=U&sentinel_password=P]
    redis+cluster://[[username]:password@]host[:port][,host[:port]...]

``rediss://`` verifies the server certificate against the platform's trust store (or the
``ssl_ca_certs`` PEM file) and the host name; ``ssl_cert_reqs=none`` turns verification
off, for self-signed test setups only. In a Sentinel URL the hosts are the sentinels
(default port 26379) and the credentials are the master's; ``sentinel_password`` (and
``sentinel_username``) are for sentinels that have a ``requirepass`` of their own. In a
Cluster URL the hosts are seed nodes (default port 6379): any reachable one is enough.

Import-free apart from the standard library (config validation and ``gateway status``
parse URLs); endpoints.py turns a :class:`RedisURL` into a Twisted endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")

HostPort: TypeAlias = tuple[str, int]


class InvalidRedisURL(ValueError):
    """The URL cannot be turned into connection settings."""


def _show_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _auth(username: str | None, password: str | None) -> str:
    return f"{username or ''}:***@" if password is not None else ""


@dataclass(frozen=True)
class RedisURL:
    """Parsed connection settings of one server; ``str()`` never shows the password."""

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
        auth = _auth(self.username, self.password)
        if self.unix_path is not None:
            return f"unix://{auth}{self.unix_path}?db={self.db}"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}{_show_host(self.host, self.port)}/{self.db}"

    @property
    def address(self) -> HostPort:
        return (self.host, self.port)


@dataclass(frozen=True)
class SentinelURL:
    """A master found through Redis Sentinel: the sentinels to ask and the master's name."""

    sentinels: tuple[HostPort, ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        hosts = ",".join(_show_host(h, p) for h, p in self.sentinels)
        auth = _auth(self.username, self.password)
        return f"redis+sentinel://{auth}{hosts}/{self.master_name}/{self.db}"

    def sentinel(self, address: HostPort) -> RedisURL:
        """How to reach one sentinel (database 0: sentinels have no SELECT)."""
        host, port = address
        return RedisURL(
            host=host, port=port, username=self.sentinel_username, password=self.sentinel_password
        )

    def master(self, address: HostPort) -> RedisURL:
        """How to reach the master the sentinels named."""
        host, port = address
        return RedisURL(
            host=host, port=port, db=self.db, username=self.username, password=self.password
        )


@dataclass(frozen=True)
class ClusterURL:
    """A Redis Cluster: seed nodes to learn the slot map from, and the nodes' credentials."""

    seeds: tuple[HostPort, ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        hosts = ",".join(_show_host(h, p) for h, p in self.seeds)
        return f"redis+cluster://{_auth(self.username, self.password)}{hosts}"

    def node(self, address: HostPort) -> RedisURL:
        """How to reach one cluster node (database 0: a cluster has no other)."""
        host, port = address
        return RedisURL(host=host, port=port, username=self.username, password=self.password)


RedisTarget: TypeAlias = RedisURL | SentinelURL | ClusterURL


def parse_redis_target(url: str) -> RedisTarget:
    """Parse any accepted form; raises :class:`InvalidRedisURL` (never showing the password)."""
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        shown = scheme if sep else url.partition(":")[0]
        raise InvalidRedisURL(
            f"unsupported Redis URL scheme {shown!r} "
            "(redis, rediss, unix, redis+sentinel, redis+cluster)"
        )
    if scheme == "redis+sentinel":
        return _parse_sentinel(url)
    if scheme == "redis+cluster":
        return _parse_cluster(url)
    return _parse_single(url)


def parse_redis_url(url: str) -> RedisURL:
    """Parse a single-server URL (redis, rediss, unix); the other forms are rejected."""
    target = parse_redis_target(url)
    if not isinstance(target, RedisURL):
        raise InvalidRedisURL(f"expected a single-server Redis URL, got {target}")
    return target


def _parse_single(url: str) -> RedisURL:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
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


@dataclass(frozen=True)
class _MultiHost:
    """The parts of a ``scheme://[auth@]h:p,h:p/path?query`` URL (urlsplit cannot do lists)."""

    hosts: tuple[HostPort, ...]
    username: str | None
    password: str | None
    path: str
    query: dict[str, str]


def _split_multi(url: str, scheme: str, default_port: int) -> _MultiHost:
    rest = url.partition("://")[2]
    rest = rest.partition("#")[0]
    rest, _, query_text = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts = tuple(_host_port(item, scheme, default_port) for item in hostlist.split(","))
    query = {k: v[-1] for k, v in parse_qs(query_text, keep_blank_values=True).items()}
    return _MultiHost(hosts, username, password, path if slash else "", query)


def _host_port(item: str, scheme: str, default_port: int) -> HostPort:
    item = item.strip()
    if not item:
        raise InvalidRedisURL(f"{scheme}:// URL needs host:port[,host:port...]")
    if item.startswith("["):  # [v6]:port
        host, close, tail = item[1:].partition("]")
        if not close or (tail and not tail.startswith(":")):
            raise InvalidRedisURL(f"bad host {item!r} in {scheme}:// URL")
        port_text = tail[1:]
    else:
        host, _, port_text = item.partition(":")
    if not port_text:
        return (host, default_port)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidRedisURL(f"bad port {port_text!r} in {scheme}:// URL")
    return (host, int(port_text))


def _reject_query(query: dict[str, str], allowed: tuple[str, ...], scheme: str) -> None:
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        allowed_text = ", ".join(allowed) or "none"
        raise InvalidRedisURL(
            f"unknown {scheme}:// URL option(s) {', '.join(unknown)} (allowed: {allowed_text})"
        )


def _parse_sentinel(url: str) -> SentinelURL:
    scheme = "redis+sentinel"
    parts = _split_multi(url, scheme, DEFAULT_SENTINEL_PORT)
    _reject_query(parts.query, ("sentinel_username", "sentinel_password"), scheme)
    name, _, db_text = parts.path.partition("/")
    name = unquote(name)
    if not name:
        raise InvalidRedisURL(
            "redis+sentinel:// URL needs the master name: redis+sentinel://host:port/<name>[/db]"
        )
    return SentinelURL(
        sentinels=parts.hosts,
        master_name=name,
        db=_db(db_text, None),
        username=parts.username,
        password=parts.password,
        sentinel_username=parts.query.get("sentinel_username") or None,
        sentinel_password=parts.query.get("sentinel_password"),
    )


def _parse_cluster(url: str) -> ClusterURL:
    scheme = "redis+cluster"
    parts = _split_multi(url, scheme, DEFAULT_PORT)
    _reject_query(parts.query, (), scheme)
    if _db(parts.path, None) != 0:
        raise InvalidRedisURL("redis+cluster:// URL: a Redis Cluster has only database 0")
    return ClusterURL(seeds=parts.hosts, username=parts.username, password=parts.password)


def _db(path: str, query_db: str | None) -> int:
    raw = path.strip("/") or query_db or "0"
    try:
        db = int(raw)
    except ValueError:
        raise InvalidRedisURL(f"Redis database must be a number, not {raw!r}") from None
    if db < 0:
        raise InvalidRedisURL(f"Redis database must be >= 0, not {db}")
    return db
