"""The config file's shape: which type every key's value must have, checked in one place.

:func:`check` walks a parsed TOML document against :data:`SCHEMA` before any value is used,
so a wrongly typed value anywhere (``[methods] foo = 3``, ``default_backend = ["a"]``, a
list where a table belongs) is a :class:`ConfigError` naming its key, never a TypeError
deep in the parsers. Only types are checked here; values (ranges, choices, cross-references)
and unknown keys are the parsers' (gateway.config), which name the key too.

Standard library only, like gateway.config.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the problem."""


@dataclass(frozen=True)
class Scalar:
    name: str  # what the error says was expected
    accepts: Callable[[object], bool]


@dataclass(frozen=True)
class ListOf:
    item: Spec

    @property
    def name(self) -> str:
        return f"list of {self.item.name}"


@dataclass(frozen=True)
class Table:
    fields: Mapping[str, Spec]
    name: str = "table"


@dataclass(frozen=True)
class MapOf:
    """A table whose keys are names the user picks (backends, routes, methods)."""

    value: Spec
    name: str = "table"


Spec = Scalar | ListOf | Table | MapOf


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    # inf and nan are TOML floats, but no timeout or size of ours means anything with them.
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)  # type: ignore[arg-type]


# Named as the parsers' own messages name them ("expected int, got 1.5").
STR = Scalar("str", lambda v: isinstance(v, str))
INT = Scalar("int", _is_int)
NUMBER = Scalar("int/float", _is_number)
BOOL = Scalar("bool", lambda v: isinstance(v, bool))
# Checked, with a message of its own, by the key's parser (gateway.config.parse_workers).
OWN_CHECK = Scalar("anything", lambda v: True)

POLICY = Table(
    {
        "mode": STR,
        "ttl": NUMBER,
        "stale_ttl": NUMBER,
        "timeout": NUMBER,
        "cache_exceptions": BOOL,
        "idempotent": BOOL,
        "exclude_fields": ListOf(INT),
        "key_headers": ListOf(STR),
        "backend": STR,
        "preview": INT,
        "key_peer": BOOL,
    }
)

BACKEND = Table(
    {
        "address": STR,
        "replicas": ListOf(STR),
        "transport": STR,
        "protocol": STR,
        "multiplexed": BOOL,
        "service": STR,
        "connections": INT,
        "max_concurrency": INT,
        "queue_size": INT,
        "connect_timeout": NUMBER,
        "hedge_after": NUMBER,
        "tls": BOOL,
        "tls_ca": STR,
        "tls_server_name": STR,
        "tls_cert": STR,
        "tls_key": STR,
        "pipelining": BOOL,
        "idle_timeout": NUMBER,
        "max_connecting": INT,
        "client_share": NUMBER,
    }
)

GATEWAY = Table(
    {
        "listen": STR,
        "admin": STR,
        "advertise": STR,
        "node_id": STR,
        "log_format": STR,
        "default_backend": STR,
        "drain_timeout": NUMBER,
        "idle_timeout": NUMBER,
        "max_frame_size": INT,
        "max_depth": INT,
        "max_collection_size": INT,
        "cache_max_entries": INT,
        "max_pipelined": INT,
        "max_unsent_bytes": INT,
        "max_connections": INT,
        "body_timeout": NUMBER,
        "max_partial_bytes": INT,
        "workers": OWN_CHECK,
        "tls_listen": STR,
        "tls_cert": STR,
        "tls_key": STR,
        "tls_client_ca": STR,
        "tls_min_version": STR,
        "header_zlib_replies": BOOL,
    }
)

REDIS = Table(
    {
        "url": STR,
        "prefix": STR,
        "hmac_secret": STR,
        "max_shared_bytes": INT,
        "lease_ttl": NUMBER,
        "handoff_ttl": NUMBER,
        "reply_timeout": NUMBER,
        "session_ttl": NUMBER,
    }
)

SCHEMA = Table(
    {
        "gateway": GATEWAY,
        "backends": MapOf(BACKEND),
        "routes": MapOf(STR),
        "methods": MapOf(POLICY),
        "redis": REDIS,
    }
)


def check(value: Any, spec: Spec = SCHEMA, where: str = "") -> None:
    """Raise ConfigError naming the first key (dotted path) whose value has the wrong type."""
    if isinstance(spec, Scalar):
        if isinstance(value, bool) and spec in (INT, NUMBER):  # TOML true is no 1
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, float) and spec is NUMBER and not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite int/float, got {value!r}")
        if not spec.accepts(value):
            raise ConfigError(f"{where}: expected {spec.name}, got {_shown(value)}")
    elif isinstance(spec, ListOf):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {spec.name}, got {_shown(value)}")
        for i, item in enumerate(value):
            check(item, spec.item, f"{where}[{i}]")
    else:
        if not isinstance(value, dict):
            raise ConfigError(f"{where or 'config'}: expected {spec.name}, got {_shown(value)}")
        for key, item in value.items():
            sub = spec.value if isinstance(spec, MapOf) else spec.fields.get(key)
            if sub is not None:  # unknown keys are refused by the parsers, by name
                check(item, sub, f"{where}.{key}" if where else key)


def _shown(value: object) -> str:
    """The offending value, short: a table or list by its kind, a scalar as written."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return f"a list {value!r}" if len(repr(value)) <= 40 else "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
