"""Config parsing: TOML plus flag overrides into frozen dataclasses, with clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import ConfigError, build_config, load_config

NO_FLAGS: dict[str, str | None] = {}

FULL = """
[gateway]
listen = "127.0.0.1:9090"
node_id = "gw-1"
admin = "127.0.0.1:9100"
log_format = "json"
drain_timeout = 5
max_frame_size = 1048576

[redis]
url = "redis://:secret@127.0.0.1:6379/0"
prefix = "gw:"
hmac_secret = "s3cret"
lease_ttl = 2.5

[backends.default]
address = "127.0.0.1:9091"
replicas = ["127.0.0.1:9092"]
hedge_after = 0.05

[backends.poetry]
address = "127.0.0.1:9093"
protocol = "compact"
transport = "buffered"
multiplexed = true
service = "Poetry"

[routes]
Poetry = "poetry"

[methods."*"]
timeout = 10

[methods.getPoem]
mode = "cache"
ttl = 60
stale_ttl = 30
cache_exceptions = true
idempotent = true
backend = "poetry"
exclude_fields = [2]

[methods."Supervisor:notify"]
mode = "passthrough"
"""


def test_full_config_parses(tmp_path: Path) -> None:
    """Every documented key is accepted and lands in the right dataclass field."""
    path = tmp_path / "gateway.toml"
    path.write_text(FULL)
    cfg = load_config(str(path), NO_FLAGS)
    assert str(cfg.listen) == "127.0.0.1:9090"
    assert cfg.node_id == "gw-1" and cfg.log_format == "json" and cfg.drain_timeout == 5.0
    assert (
        cfg.redis is not None and cfg.redis.hmac_secret == "s3cret" and cfg.redis.lease_ttl == 2.5
    )
    assert cfg.backends["default"].addresses[1].port == 9092
    assert cfg.backends["poetry"].protocol == "compact" and cfg.backends["poetry"].multiplexed
    poem = cfg.methods["getPoem"]
    assert poem.backend == "poetry" and poem.policy.mode == "cache" and poem.policy.ttl == 60
    assert poem.policy.stale_ttl == 30 and poem.policy.cache_exceptions
    assert poem.policy.timeout == 10.0  # inherited from methods."*"
    assert cfg.max_frame_size == 1048576
    assert poem.policy.exclude_fields == frozenset({2})
    assert cfg.methods["Supervisor:notify"].policy.mode == "passthrough"
    assert cfg.default_backend == "default"


def test_flags_alone_make_a_config() -> None:
    """--listen and --backend are enough without a file."""
    cfg = build_config({}, {"listen": "127.0.0.1:0", "backend": "127.0.0.1:9091", "node_id": "a"})
    assert cfg.backends["default"].address.port == 9091
    assert cfg.default_backend == "default" and cfg.redis is None and cfg.node_id == "a"


def test_flags_override_file_values() -> None:
    """A flag wins over the same key in the file."""
    raw = {"gateway": {"listen": "127.0.0.1:1"}, "backends": {"default": {"address": "h:2"}}}
    cfg = build_config(raw, {"listen": "127.0.0.1:3", "redis": "redis://127.0.0.1:4/0"})
    assert cfg.listen.port == 3 and cfg.redis is not None and cfg.redis.url.endswith(":4/0")


@pytest.mark.parametrize(
    ("raw", "flags", "needle"),
    [
        ({}, {"backend": "h:1"}, "gateway.listen: required"),
        ({}, {"listen": "h:1"}, "at least one backend"),
        ({}, {"listen": "nonsense", "backend": "h:1"}, "expected HOST:PORT"),
        ({}, {"listen": "h:1", "backend": "h:99999"}, "expected HOST:PORT"),
        ({"methods": {"m": {"mode": "cache"}}}, {"listen": "h:1", "backend": "h:2"}, "needs ttl"),
        (
            {"methods": {"m": {"mode": "fast"}}},
            {"listen": "h:1", "backend": "h:2"},
            "methods.m.mode",
        ),
        ({"methods": {"m": {"ttl": "x"}}}, {"listen": "h:1", "backend": "h:2"}, "methods.m.ttl"),
        ({"routes": {"S": "nope"}}, {"listen": "h:1", "backend": "h:2"}, "routes.S"),
        ({"gateway": {"colour": 1}}, {"listen": "h:1", "backend": "h:2"}, "unknown key(s) colour"),
        ({"redis": {"url": "http://x"}}, {"listen": "h:1", "backend": "h:2"}, "redis.url"),
        (
            {"redis": {"url": "redis://h", "lease_ttl": 1, "reply_timeout": 0.5}},
            {"listen": "h:1", "backend": "h:2"},
            "redis.reply_timeout: 0.5s is more than redis.lease_ttl / 3",
        ),
        (
            {"redis": {"url": "redis://h", "lease_ttl": 5, "handoff_ttl": 5.5}},
            {"listen": "h:1", "backend": "h:2"},
            "redis.handoff_ttl: 5.5s is less than redis.lease_ttl + redis.reply_timeout",
        ),
        (
            {"backends": {"a.b": {"address": "h:2"}}},
            {"listen": "h:1"},
            "backends.a.b: backend names may only use",
        ),
        ({"gateway": {"node_id": "a/b"}}, {"listen": "h:1", "backend": "h:2"}, "gateway.node_id"),
        (
            {
                "backends": {
                    "t": {"address": "h:2", "transport": "header", "protocol": "binary-nonstrict"}
                }
            },
            {"listen": "h:1"},
            "backends.t.protocol: transport 'header' carries binary or compact",
        ),
        (
            {"backends": {"t": {"address": "h:2", "transport": "http"}}},
            {"listen": "h:1"},
            "backends.t.transport: expected one of framed, buffered, header",
        ),
        (
            {"methods": {"m": {"key_headers": "tenant"}}},
            {"listen": "h:1", "backend": "h:2"},
            "methods.m.key_headers: expected list",
        ),
        (
            {"methods": {"m": {"key_headers": ["tenant", ""]}}},
            {"listen": "h:1", "backend": "h:2"},
            "methods.m.key_headers: expected a list of non-empty header names",
        ),
    ],
)
def test_bad_config_names_the_key(
    raw: dict[str, object], flags: dict[str, str | None], needle: str
) -> None:
    """Each invalid setting raises ConfigError whose message names the offending key."""
    with pytest.raises(ConfigError, match=re.escape(needle)):
        build_config(raw, flags)


def test_reply_timeout_follows_a_short_lease_by_default() -> None:
    """Without an explicit reply_timeout, a short lease_ttl gets one that fits its renewals."""
    cfg = build_config(
        {"redis": {"url": "redis://h", "lease_ttl": 0.6}}, {"listen": "h:1", "backend": "h:2"}
    )
    assert cfg.redis is not None and cfg.redis.reply_timeout == pytest.approx(0.2)
    default = build_config({"redis": {"url": "redis://h"}}, {"listen": "h:1", "backend": "h:2"})
    assert default.redis is not None and default.redis.reply_timeout == 1.0


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist is reported as such, not as a traceback."""
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "absent.toml"), NO_FLAGS)


FLAGS: dict[str, str | None] = {"listen": "127.0.0.1:0", "backend": "127.0.0.1:9091"}


def test_client_connection_limits_parse_with_their_defaults() -> None:
    """The four [gateway] connection limits parse, and default to 128 / 1 MiB / never / 10000."""
    default = build_config({}, FLAGS)
    assert (default.max_pipelined, default.max_unsent_bytes) == (128, 1 << 20)
    assert (default.idle_timeout, default.max_connections) == (0.0, 10_000)
    raw = {
        "gateway": {
            "max_pipelined": 8,
            "max_unsent_bytes": 65536,
            "idle_timeout": 300,
            "max_connections": 500,
        }
    }
    cfg = build_config(raw, FLAGS)
    assert (cfg.max_pipelined, cfg.max_unsent_bytes) == (8, 65536)
    assert (cfg.idle_timeout, cfg.max_connections) == (300.0, 500)


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("max_pipelined", 0, "gateway.max_pipelined: must be > 0"),
        ("max_pipelined", 1.5, "gateway.max_pipelined: expected int"),
        ("max_unsent_bytes", -1, "gateway.max_unsent_bytes: must be > 0"),
        ("max_connections", 0, "gateway.max_connections: must be > 0"),
        ("max_connections", True, "gateway.max_connections: expected a number"),
        ("idle_timeout", -1, "gateway.idle_timeout: must be >= 0"),
        ("idle_timeout", "5m", "gateway.idle_timeout: expected int/float"),
    ],
)
def test_bad_client_connection_limit_names_the_key(key: str, value: object, needle: str) -> None:
    """An invalid connection limit is a one-line ConfigError naming gateway.<key>."""
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")) as info:
        build_config({"gateway": {key: value}}, FLAGS)
    assert "\n" not in str(info.value)


def test_header_transport_and_key_headers_parse() -> None:
    """transport = "header" is a backend transport; key_headers are per method, inherited from
    methods."*" unless a method sets its own list."""
    config = build_config(
        {
            "backends": {"default": {"address": "h:2", "transport": "header",
                                     "protocol": "compact"}},
            "methods": {"*": {"key_headers": ["tenant"]}, "getPoem": {"key_headers": ["zone"]},
                        "other": {"mode": "passthrough"}},
        },
        {"listen": "h:1"},
    )  # fmt: skip
    assert config.backends["default"].transport == "header"
    assert config.default_policy.key_headers == frozenset({"tenant"})
    assert config.methods["getPoem"].policy.key_headers == frozenset({"zone"})
    assert config.methods["other"].policy.key_headers == frozenset({"tenant"})
