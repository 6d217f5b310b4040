"""Gateway configuration: a TOML file plus command-line overrides, parsed into frozen dataclasses.

Parsing lives here, apart from the runtime, so a bad config fails before any socket opens and
every error names the offending key. docs/configuration.md documents each key (see KEYS).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.configschema import BACKEND, GATEWAY, POLICY, REDIS, SCHEMA, check
from gateway.configschema import ConfigError as ConfigError  # re-exported: its home for users
from gateway.contracts import MethodPolicy
from gateway.observe import PREVIEW_LIMIT

# url.py is standard-library only (like keys.py for the CLI): validating a URL here loads
# no Twisted or Redis client.
from gateway.redis.url import InvalidRedisURL, parse_redis_target

MODES = ("coalesce", "cache", "passthrough")
TRANSPORTS = ("framed", "buffered", "header")
PROTOCOLS = ("binary", "binary-nonstrict", "compact")
TLS_VERSIONS = ("1.2", "1.3")  # older ones are broken; OpenSSL 3 refuses them by default

# Every key each table accepts; any other is a ConfigError naming it. Derived from the one
# typed schema (gateway.configschema), and the one list the configuration reference
# (docs/configuration.md) is checked against, both ways, by tests/test_docs.py. [routes] is
# left out: its keys are service names.
KEYS: dict[str, tuple[str, ...]] = {
    "config": tuple(SCHEMA.fields),
    "gateway": tuple(GATEWAY.fields),
    "redis": tuple(REDIS.fields),
    "backends.<name>": tuple(BACKEND.fields),
    "methods.<name>": tuple(POLICY.fields),
}


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class BackendTLS:
    """TLS to a backend (``[backends.X] tls = true``): the server is always verified."""

    ca: str | None = None  # PEM file of the CAs to trust; None: the system's trust store
    server_name: str | None = None  # name checked in its certificate (and SNI); None: the host
    cert: str | None = None  # PEM client certificate (chain) presented to the backend
    key: str | None = None  # its PEM private key


@dataclass(frozen=True)
class ServerTLS:
    """TLS on the client port's ``tls_listen`` listener (``[gateway] tls_*``)."""

    cert: str  # PEM certificate chain, the server's own first
    key: str  # its PEM private key
    client_ca: str | None = None  # PEM CAs; set: every client must present a cert they signed
    min_version: str = "1.2"


@dataclass(frozen=True)
class BackendConfig:
    name: str
    address: Address
    replicas: tuple[Address, ...] = ()
    transport: str = "framed"
    protocol: str = "binary"
    multiplexed: bool = False  # send "Service:method" upstream
    service: str = ""  # service name used upstream for plain client calls when multiplexed
    connections: int = 4
    max_concurrency: int = 64
    queue_size: int = 1024
    connect_timeout: float = 5.0
    hedge_after: float | None = None  # seconds before hedging an idempotent call to a replica
    # TLS to this backend (see gateway.proxy.tls_upstream); the tls_* keys need tls = true.
    tls: bool = False
    tls_ca: str | None = None
    tls_server_name: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    pipelining: bool = False  # many calls per connection (default: one; see proxy.upstream)
    idle_timeout: float = 60.0  # seconds an idle pooled connection beyond `connections` lives
    max_connecting: int = 8  # backend connects in flight at once
    client_share: float = 0.25  # fraction of max_concurrency one client connection may hold

    @property
    def addresses(self) -> tuple[Address, ...]:
        return (self.address, *self.replicas)

    @property
    def tls_options(self) -> BackendTLS | None:
        """The backend's TLS settings together; None for plain TCP."""
        if not self.tls:
            return None
        return BackendTLS(self.tls_ca, self.tls_server_name, self.tls_cert, self.tls_key)


@dataclass(frozen=True)
class MethodConfig:
    policy: MethodPolicy
    backend: str | None = None  # route this method to a named backend
    preview: int = 0  # characters of its arguments shown with its hot keys (0: none)


@dataclass(frozen=True)
class RedisConfig:
    url: str
    prefix: str = "gw:"
    hmac_secret: str | None = None
    max_shared_bytes: int = 1 << 20
    lease_ttl: float = 5.0
    handoff_ttl: float = 30.0
    reply_timeout: float = 1.0  # seconds Redis has to answer one command (see parse_redis)
    session_ttl: float = 1.0  # seconds a node's session outlives its last renewal


@dataclass(frozen=True)
class GatewayConfig:
    listen: Address
    backends: dict[str, BackendConfig]
    default_backend: str | None
    node_id: str = field(default_factory=socket.gethostname)
    admin: Address | None = None
    advertise: str | None = None  # "HOST" or "HOST:PORT" others reach this node at
    log_format: str = "text"
    drain_timeout: float = 10.0
    max_frame_size: int = 16 * 1024 * 1024
    max_depth: int = 64
    max_collection_size: int = 1_000_000
    routes: dict[str, str] = field(default_factory=dict)  # multiplexed service -> backend
    methods: dict[str, MethodConfig] = field(default_factory=dict)
    default_policy: MethodPolicy = field(default_factory=MethodPolicy)
    redis: RedisConfig | None = None
    cache_max_entries: int = 10_000  # local (no-Redis) cache bound
    # Client connections (see gateway.proxy.connections.ClientLimits for the defaults' why).
    max_pipelined: int = 128  # calls dispatched and unanswered per client connection
    max_unsent_bytes: int = 1 << 20  # unread reply bytes before a client's calls stop being read
    idle_timeout: float = 0.0  # seconds; 0: never close idle client connections
    max_connections: int = 10_000  # open client connections; more are closed at once
    body_timeout: float = 10.0  # seconds for a message to be whole after its first bytes; 0: never
    max_partial_bytes: int = 256 << 20  # partial client messages buffered, node-wide
    # Processes serving the client port (gateway.workers): 1 = this process, no supervisor.
    workers: int = 1
    # A second client listener speaking TLS (see gateway.proxy.tls); tls_cert and tls_key
    # are set exactly when tls_listen is.
    tls_listen: Address | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    tls_min_version: str = "1.2"

    @property
    def tls(self) -> ServerTLS | None:
        """The client port's TLS settings together; None without a TLS listener."""
        if self.tls_listen is None or self.tls_cert is None or self.tls_key is None:
            return None
        return ServerTLS(self.tls_cert, self.tls_key, self.tls_client_ca, self.tls_min_version)

    # THeader replies zlib-compressed when their call was (docs/dialects-notes.md: off by
    # default because Apache Thrift C++ 0.17 overruns its heap inflating large ones).
    header_zlib_replies: bool = False


def parse_address(text: str, key: str, allow_zero: bool = False) -> Address:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` too); raise ConfigError naming ``key``.

    Port 0 (pick a free port) is allowed only where the gateway listens.
    """
    host, sep, port_text = str(text).rpartition(":")
    host = host.strip("[]")
    lowest = 0 if allow_zero else 1
    # isascii: "²" and other Unicode digits pass isdigit() but not int().
    digits = port_text.isascii() and port_text.isdigit()
    if not sep or not host or not digits or not lowest <= int(port_text) < 65536:
        raise ConfigError(f"{key}: expected HOST:PORT, got {text!r}")
    return Address(host, int(port_text))


def parse_advertise(text: str) -> str:
    """``HOST`` or ``HOST:PORT`` (``[v6]`` or ``[v6]:PORT``), checked, returned as given."""
    if (text.startswith("[") and text.endswith("]")) or ":" not in text:
        host = text.strip("[]")
        if not host or any(c.isspace() for c in host):
            raise ConfigError(f"gateway.advertise: expected HOST or HOST:PORT, got {text!r}")
        return text
    parse_address(text, "gateway.advertise")
    return text


def advertised_address(config: GatewayConfig, port: int) -> str:
    """The ``HOST:PORT`` this node tells the cluster (``gateway status``, dashboards).

    ``advertise`` as configured; a bare host gets the real listen ``port``. Without it, the
    listen address with a wildcard host (0.0.0.0, ::) replaced by this machine's host name.
    """
    if config.advertise is not None:
        if config.advertise.startswith("[") and config.advertise.endswith("]"):
            return f"{config.advertise}:{port}"
        return config.advertise if ":" in config.advertise else f"{config.advertise}:{port}"
    host = config.listen.host
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


MAX_WORKERS = 1024  # a typo guard ("workers = 10000"), far above any machine's cores


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def parse_workers(value: object) -> int:
    """``workers``: a whole number 1..MAX_WORKERS, or ``"auto"`` (one per usable core)."""
    if value == "auto":
        return usable_cores()
    if isinstance(value, str) and value.isascii() and value.isdigit():  # --workers N: text
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(
            f'gateway.workers: expected a number 1..{MAX_WORKERS} or "auto", got {value!r}'
        )
    return value


def _take(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table.pop(key)
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}.{key}: expected {names}, got {value!r}")
    return value


def _check_keys(table: dict[str, Any], where: str, section: str) -> None:
    """Refuse keys that KEYS does not list for ``section``, before any value is read."""
    _reject_unknown({k: v for k, v in table.items() if k not in KEYS[section]}, where)


def _reject_unknown(table: dict[str, Any], where: str) -> None:
    if table:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(table))}")


def _positive(value: float, where: str) -> None:
    if value <= 0:
        raise ConfigError(f"{where}: must be > 0, got {value!r}")


def parse_policy(raw: dict[str, Any], where: str, base: MethodPolicy) -> MethodConfig:
    table = dict(raw)
    _check_keys(table, where, "methods.<name>")
    kwargs: dict[str, Any] = {}
    if "mode" in table:
        mode = _take(table, "mode", str, where)
        if mode not in MODES:
            raise ConfigError(f"{where}.mode: expected one of {', '.join(MODES)}, got {mode!r}")
        kwargs["mode"] = mode
    for name in ("ttl", "stale_ttl", "timeout"):
        if name in table:
            kwargs[name] = float(_take(table, name, (int, float), where))
            if kwargs[name] < 0 or (name == "timeout" and kwargs[name] == 0):
                raise ConfigError(f"{where}.{name}: must be positive, got {kwargs[name]!r}")
    for name in ("cache_exceptions", "idempotent", "key_peer"):
        if name in table:
            kwargs[name] = _take(table, name, bool, where)
    if "exclude_fields" in table:
        ids = _take(table, "exclude_fields", list, where)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ConfigError(f"{where}.exclude_fields: expected a list of field ids")
        if not all(-(1 << 15) <= i < 1 << 15 for i in ids):  # Thrift field ids are i16
            raise ConfigError(f"{where}.exclude_fields: field ids are -32768..32767")
        kwargs["exclude_fields"] = frozenset(ids)
    if "key_headers" in table:
        names = _take(table, "key_headers", list, where)
        if not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"{where}.key_headers: expected a list of non-empty header names")
        kwargs["key_headers"] = frozenset(names)
    backend = _take(table, "backend", str, where) if "backend" in table else None
    preview = 0
    if "preview" in table:
        preview = _take(table, "preview", int, where)
        if not 0 <= preview <= PREVIEW_LIMIT:
            raise ConfigError(f"{where}.preview: expected 0..{PREVIEW_LIMIT}, got {preview!r}")
        if where == "methods.*":
            # Arguments may hold personal data: showing them is a per-method decision.
            raise ConfigError("methods.*.preview: set preview per method, not for all")
    _reject_unknown(table, where)
    policy = replace(base, **kwargs)
    if policy.mode == "cache" and policy.ttl <= 0:
        raise ConfigError(f"{where}: mode = 'cache' needs ttl > 0")
    return MethodConfig(policy=policy, backend=backend, preview=preview)


_NAME = re.compile(r"[A-Za-z0-9_-]+")


def parse_backend(name: str, raw: dict[str, Any]) -> BackendConfig:
    where = f"backends.{name}"
    if not _NAME.fullmatch(name):
        # Backend names are part of every call key ("<backend>.<method>:<hash>") and of
        # metric labels: keep them plain.
        raise ConfigError(f"{where}: backend names may only use letters, digits, '_' and '-'")
    table = dict(raw)
    _check_keys(table, where, "backends.<name>")
    if "address" not in table:
        raise ConfigError(f"{where}.address: required")
    kwargs: dict[str, Any] = {
        "address": parse_address(_take(table, "address", str, where), f"{where}.address")
    }
    if "replicas" in table:
        replicas = _take(table, "replicas", list, where)
        kwargs["replicas"] = tuple(parse_address(r, f"{where}.replicas") for r in replicas)
    for name_, choices in (("transport", TRANSPORTS), ("protocol", PROTOCOLS)):
        if name_ in table:
            value = _take(table, name_, str, where)
            if value not in choices:
                raise ConfigError(f"{where}.{name_}: expected one of {', '.join(choices)}")
            kwargs[name_] = value
    for name_ in ("multiplexed", "pipelining"):
        if name_ in table:
            kwargs[name_] = _take(table, name_, bool, where)
    if "service" in table:
        kwargs["service"] = _take(table, "service", str, where)
    for name_ in ("connections", "max_concurrency", "queue_size", "max_connecting"):
        if name_ in table:
            kwargs[name_] = _take(table, name_, int, where)
            _positive(kwargs[name_], f"{where}.{name_}")
    for name_ in ("connect_timeout", "hedge_after", "idle_timeout", "client_share"):
        if name_ in table:
            kwargs[name_] = float(_take(table, name_, (int, float), where))
            _positive(kwargs[name_], f"{where}.{name_}")
    kwargs.update(parse_backend_tls(table, where))
    if kwargs.get("client_share", 0.25) > 1:
        raise ConfigError(f"{where}.client_share: a fraction of max_concurrency, at most 1")
    _reject_unknown(table, where)
    if kwargs.get("transport") == "header" and kwargs.get("protocol") == "binary-nonstrict":
        # A THeader frame names its protocol: binary (strict) or compact, nothing else.
        raise ConfigError(f"{where}.protocol: transport 'header' carries binary or compact")
    return BackendConfig(name=name, **kwargs)


def parse_backend_tls(table: dict[str, Any], where: str) -> dict[str, Any]:
    """Take ``tls`` and the ``tls_*`` keys of a backend table (BackendConfig fields)."""
    enabled = _take(table, "tls", bool, where) if "tls" in table else False
    paths = {
        name: _take(table, f"tls_{name}", str, where)
        for name in ("ca", "server_name", "cert", "key")
        if f"tls_{name}" in table
    }
    if not enabled:
        if paths:
            # Refused rather than ignored: a CA set without tls = true would look secure.
            raise ConfigError(f"{where}: tls_{next(iter(paths))} is set but tls is not true")
        return {"tls": False}
    if ("cert" in paths) != ("key" in paths):
        raise ConfigError(f"{where}: tls_cert and tls_key go together (a client certificate)")
    if paths.get("server_name") == "":
        raise ConfigError(f"{where}.tls_server_name: must not be empty")
    return {"tls": True, **{f"tls_{name}": value for name, value in paths.items()}}


def parse_server_tls(gw: dict[str, Any]) -> dict[str, Any]:
    """Take ``tls_listen`` and the ``tls_*`` keys of the [gateway] table (GatewayConfig
    fields)."""
    names = ("tls_cert", "tls_key", "tls_client_ca", "tls_min_version")
    values: dict[str, Any] = {name: _take(gw, name, str, "gateway") for name in names if name in gw}
    version = values.get("tls_min_version", GatewayConfig.tls_min_version)
    if version not in TLS_VERSIONS:
        raise ConfigError(
            f"gateway.tls_min_version: expected one of {', '.join(TLS_VERSIONS)}, got {version!r}"
        )
    if "tls_listen" not in gw:
        files = [name for name in names[:3] if name in values]
        if files:  # a certificate with no listener to serve it on is a mistake, not a no-op
            raise ConfigError(f"gateway.{files[0]}: set gateway.tls_listen too")
        return values
    values["tls_listen"] = parse_address(
        _take(gw, "tls_listen", str, "gateway"), "tls_listen", True
    )
    for name in ("tls_cert", "tls_key"):
        if name not in values:
            raise ConfigError(f"gateway.{name}: required with gateway.tls_listen")
    return values


def parse_redis(raw: dict[str, Any]) -> RedisConfig:
    table = dict(raw)
    _check_keys(table, "redis", "redis")
    if "url" not in table:
        raise ConfigError("redis.url: required")
    url = _take(table, "url", str, "redis")
    try:
        parse_redis_target(url)
    except InvalidRedisURL as exc:  # the message never shows the password
        raise ConfigError(f"redis.url: {exc}") from None
    kwargs: dict[str, Any] = {"url": url}
    for name in ("prefix", "hmac_secret"):
        if name in table:
            kwargs[name] = _take(table, name, str, "redis")
    if "max_shared_bytes" in table:
        kwargs["max_shared_bytes"] = _take(table, "max_shared_bytes", int, "redis")
        if kwargs["max_shared_bytes"] < 0:  # 0: never share a reply (followers call)
            raise ConfigError(
                f"redis.max_shared_bytes: must be >= 0, got {kwargs['max_shared_bytes']}"
            )
    for name in ("lease_ttl", "handoff_ttl", "reply_timeout", "session_ttl"):
        if name in table:
            kwargs[name] = float(_take(table, name, (int, float), "redis"))
            _positive(kwargs[name], f"redis.{name}")
    _reject_unknown(table, "redis")
    if "reply_timeout" not in kwargs:
        # Never more than the lease renewal period allows (see below).
        lease = kwargs.get("lease_ttl", RedisConfig.lease_ttl)
        kwargs["reply_timeout"] = min(RedisConfig.reply_timeout, lease / 3)
    config = RedisConfig(**kwargs)
    check_redis_timing(config)
    return config


def check_redis_timing(redis: RedisConfig) -> None:
    """Refuse timings under which a live leader could lose its lease or followers miss results.

    A leader renews its lease every ``lease_ttl / 3``; a renewal that gets no answer within
    ``reply_timeout`` is retried at the next tick. So ``reply_timeout <= lease_ttl / 3``
    lets one renewal fail outright and the next still land before the lease lapses. (The
    node's session is renewed every ``session_ttl / 2.5`` without waiting for replies, so
    it needs no such rule.) A
    follower reads its leader's result at the latest one lease period (plus a Redis round
    trip) after the leader finished, so the result must live at least that long:
    ``handoff_ttl >= lease_ttl + reply_timeout``. (Method timeouts need no check here: a
    follower waits ``timeout + lease_ttl`` per leader, and a leader's whole backend call -
    retries included - is bounded by ``timeout``.)
    """
    if redis.reply_timeout * 3 > redis.lease_ttl + 1e-9:
        raise ConfigError(
            f"redis.reply_timeout: {redis.reply_timeout:g}s is more than redis.lease_ttl / 3 "
            f"({redis.lease_ttl / 3:g}s): a slow renewal would let a live leader's lease lapse"
        )
    if redis.handoff_ttl < redis.lease_ttl + redis.reply_timeout:
        raise ConfigError(
            f"redis.handoff_ttl: {redis.handoff_ttl:g}s is less than redis.lease_ttl + "
            f"redis.reply_timeout ({redis.lease_ttl + redis.reply_timeout:g}s): followers "
            "could miss their leader's result"
        )


def load_config(path: str | None, overrides: dict[str, str | None]) -> GatewayConfig:
    """Read ``path`` (may be None) and apply command-line ``overrides`` (None = not given).

    Override keys: listen, backend, node_id, admin, advertise, redis, log_format, workers.
    """
    return load_config_file(path, overrides)[0]


def load_config_file(
    path: str | None, overrides: dict[str, str | None]
) -> tuple[GatewayConfig, str | None]:
    """:func:`load_config`, plus the SHA-256 (hex) of the file's bytes (None without a file).

    The digest is of the very bytes parsed (read once), so what ``/healthz`` reports matches
    ``sha256sum`` of the file the running config came from, even if it is rewritten later.
    """
    raw: dict[str, Any] = {}
    digest = None
    if path is not None:
        try:
            data = Path(path).read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            raw = tomllib.loads(data.decode())
        except FileNotFoundError:
            raise ConfigError(f"config file {path}: not found") from None
        except OSError as exc:  # unreadable (permissions, a directory): still one line
            raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path}: not UTF-8 ({exc.reason})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    return build_config(raw, overrides), digest


def build_config(raw: dict[str, Any], overrides: dict[str, str | None]) -> GatewayConfig:
    """The config of a parsed TOML document plus ``overrides``; only ever raises ConfigError.

    Every value's type is checked first, against the one schema (gateway.configschema), so
    the parsers below only meet the types they expect. Should a value still trip one of
    them, it is a ConfigError all the same: a config file is input, and a bad one must
    fail ``check-config`` with exit 2 and count as a failed reload, never crash.
    """
    check(raw)
    try:
        return _build_config(raw, overrides)
    except ConfigError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        raise ConfigError(f"config: unusable value ({type(exc).__name__}: {exc})") from None


def _build_config(raw: dict[str, Any], overrides: dict[str, str | None]) -> GatewayConfig:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    _check_keys(raw, "config", "config")
    gw: dict[str, Any] = dict(raw.pop("gateway", {}))
    _check_keys(gw, "gateway", "gateway")
    backends_raw: dict[str, Any] = dict(raw.pop("backends", {}))
    if overrides.get("backend"):
        existing = dict(backends_raw.get("default", {}))
        existing["address"] = overrides["backend"]
        backends_raw["default"] = existing
    for key in ("listen", "node_id", "admin", "advertise", "log_format", "workers"):
        if overrides.get(key):
            gw[key] = overrides[key]
    redis_raw = dict(raw.pop("redis", {}))
    if overrides.get("redis"):
        redis_raw["url"] = overrides["redis"]
    routes = raw.pop("routes", {})
    methods_raw = raw.pop("methods", {})
    _reject_unknown(raw, "config")

    if "listen" not in gw:
        raise ConfigError("gateway.listen: required (--listen HOST:PORT)")
    kwargs: dict[str, Any] = {
        "listen": parse_address(_take(gw, "listen", str, "gateway"), "listen", allow_zero=True)
    }
    if "admin" in gw:
        kwargs["admin"] = parse_address(
            _take(gw, "admin", str, "gateway"), "admin", allow_zero=True
        )
    if "advertise" in gw:
        kwargs["advertise"] = parse_advertise(_take(gw, "advertise", str, "gateway"))
    if "node_id" in gw:
        kwargs["node_id"] = _take(gw, "node_id", str, "gateway")
        node_id = kwargs["node_id"]
        if not node_id or any(c.isspace() or c in "{}:/" for c in node_id):
            raise ConfigError(
                "gateway.node_id: must be non-empty without whitespace, braces, ':' or '/'"
            )
    if "log_format" in gw:
        kwargs["log_format"] = _take(gw, "log_format", str, "gateway")
        if kwargs["log_format"] not in ("text", "json"):
            raise ConfigError("gateway.log_format: expected text or json")
    if "drain_timeout" in gw:
        kwargs["drain_timeout"] = float(_take(gw, "drain_timeout", (int, float), "gateway"))
        if kwargs["drain_timeout"] < 0:
            raise ConfigError(
                f"gateway.drain_timeout: must be >= 0, got {kwargs['drain_timeout']!r}"
            )
    for name in ("max_frame_size", "max_depth", "max_collection_size", "cache_max_entries"):
        if name in gw:
            kwargs[name] = _take(gw, name, int, "gateway")
            _positive(kwargs[name], f"gateway.{name}")
    for name in ("max_pipelined", "max_unsent_bytes", "max_connections", "max_partial_bytes"):
        if name in gw:
            kwargs[name] = _take(gw, name, int, "gateway")
            _positive(kwargs[name], f"gateway.{name}")
    if "header_zlib_replies" in gw:
        kwargs["header_zlib_replies"] = _take(gw, "header_zlib_replies", bool, "gateway")
    for name in ("idle_timeout", "body_timeout"):
        if name in gw:
            kwargs[name] = float(_take(gw, name, (int, float), "gateway"))
            if kwargs[name] < 0:
                raise ConfigError(f"gateway.{name}: must be >= 0 (0: never), got {kwargs[name]!r}")
    if "workers" in gw:
        kwargs["workers"] = parse_workers(gw.pop("workers"))
    kwargs.update(parse_server_tls(gw))
    default_backend = gw.pop("default_backend", None)
    _reject_unknown(gw, "gateway")
    if kwargs.get("tls_listen") is not None and kwargs.get("workers", 1) > 1:
        # The supervisor binds and hands out only the plain port (gateway.workers).
        raise ConfigError("gateway.tls_listen: not supported with workers > 1 yet")

    backends = {name: parse_backend(name, dict(b)) for name, b in backends_raw.items()}
    if default_backend is None and "default" in backends:
        default_backend = "default"
    if default_backend is not None and default_backend not in backends:
        raise ConfigError(f"gateway.default_backend: no backend named {default_backend!r}")
    if not backends:
        raise ConfigError("backends: at least one backend is required (--backend HOST:PORT)")
    for service, target in routes.items():
        if target not in backends:
            raise ConfigError(f"routes.{service}: no backend named {target!r}")

    methods_table = dict(methods_raw)
    default_policy = MethodPolicy()
    if "*" in methods_table:
        default_policy = parse_policy(methods_table.pop("*"), "methods.*", default_policy).policy
    methods = {
        name: parse_policy(dict(m), f"methods.{name}", default_policy)
        for name, m in methods_table.items()
    }
    for name, method in methods.items():
        if method.backend is not None and method.backend not in backends:
            raise ConfigError(f"methods.{name}.backend: no backend named {method.backend!r}")
    for name, policy in [("*", default_policy)] + [(n, m.policy) for n, m in methods.items()]:
        if policy.key_peer and kwargs.get("tls_client_ca") is None:
            # Without client certificates every caller is anonymous: nothing to key on.
            raise ConfigError(f"methods.{name}.key_peer: needs gateway.tls_client_ca (mTLS)")

    return GatewayConfig(
        backends=backends,
        default_backend=default_backend,
        routes=dict(routes),
        methods=methods,
        default_policy=default_policy,
        redis=parse_redis(redis_raw) if redis_raw else None,
        **kwargs,
    )
