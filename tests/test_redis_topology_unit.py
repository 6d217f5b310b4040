"""Unit tests (no Redis) of Sentinel and Cluster support: URLs, config, slots, replies,
and the connector's reconnect-now on a Clock."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from gateway.config import ConfigError, build_config
from gateway.redis.connection import RedisConnector, RedisUnavailable
from gateway.redis.sentinel import parse_master_address, parse_switch_master
from gateway.redis.slots import (
    SLOTS,
    SlotMap,
    command_key,
    command_slot,
    crc16,
    hash_tag,
    key_slot,
    parse_redirect,
)
from gateway.redis.url import (
    ClusterURL,
    InvalidRedisURL,
    RedisURL,
    SentinelURL,
    parse_redis_target,
    parse_redis_url,
)

# -- URLs -----------------------------------------------------------------------------------


def test_sentinel_url_hosts_master_name_db_and_credentials() -> None:
    """Every sentinel, the master name, the database and both sets of credentials are read."""
    url = parse_redis_target(
        "redis+sentinel://gw:p%40ss@10.0.0.1:26380,10.0.0.2,[::1]:5000/my-master/3"
        "?sentinel_password=s3&sentinel_username=watch"
    )
    assert url == SentinelURL(
        sentinels=(("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 5000)),
        master_name="my-master",
        db=3,
        username="gw",
        password="p@ss",
        sentinel_username="watch",
        sentinel_password="s3",
    )
    assert isinstance(url, SentinelURL)
    assert url.master(("10.9.9.9", 6390)) == RedisURL("10.9.9.9", 6390, 3, "gw", "p@ss")
    assert url.sentinel(("10.0.0.2", 26379)) == RedisURL("10.0.0.2", 26379, 0, "watch", "s3")


def test_cluster_url_seeds_and_password() -> None:
    """A cluster URL lists seed nodes (default port 6379) and the nodes' password."""
    url = parse_redis_target("redis+cluster://:pw@a:7000,b")
    assert url == ClusterURL(seeds=(("a", 7000), ("b", 6379)), password="pw")
    assert isinstance(url, ClusterURL)
    assert url.node(("c", 7002)) == RedisURL("c", 7002, 0, None, "pw")


def test_multi_host_urls_never_show_passwords() -> None:
    """str() and repr() of Sentinel and Cluster URLs hide every password."""
    for text in (
        "redis+sentinel://:topsecret@h:1/m/2?sentinel_password=alsosecret",
        "redis+cluster://u:topsecret@h:1,i:2",
    ):
        url = parse_redis_target(text)
        assert "secret" not in str(url) and "secret" not in repr(url)
    assert str(parse_redis_target("redis+cluster://u:x@h:1,i:2")) == "redis+cluster://u:***@h:1,i:2"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("redis+sentinel://h:26379", "needs the master name"),
        ("redis+sentinel://h:26379/", "needs the master name"),
        ("redis+sentinel://h:x/m", "bad port"),
        ("redis+sentinel://h:1,,i:2/m", "needs host:port"),
        ("redis+sentinel://h:1/m/x", "must be a number"),
        ("redis+sentinel://h:1/m?ssl=1", "unknown redis\\+sentinel:// URL option"),
        ("redis+cluster://h:1/2", "only database 0"),
        ("redis+cluster://h:70000", "bad port"),
        ("redis+cluster://", "needs host:port"),
        ("redis+cluster://h?x=1", "unknown redis\\+cluster:// URL option"),
        ("rediss+cluster://h", "unsupported Redis URL scheme"),
    ],
)
def test_bad_multi_host_urls_say_why(bad: str, reason: str) -> None:
    """Malformed Sentinel/Cluster URLs raise InvalidRedisURL with the reason."""
    with pytest.raises(InvalidRedisURL, match=reason):
        parse_redis_target(bad)


def test_single_server_parser_rejects_multi_host_forms() -> None:
    """parse_redis_url (one server) refuses Sentinel and Cluster URLs instead of guessing."""
    with pytest.raises(InvalidRedisURL, match="single-server"):
        parse_redis_url("redis+cluster://h:1")


# -- config: redis.url ----------------------------------------------------------------------

FLAGS = {"listen": "127.0.0.1:1", "backend": "127.0.0.1:2"}


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:1/0",
        "rediss://h:1/0?ssl_cert_reqs=none",
        "unix:///run/redis.sock?db=1",
        "redis+sentinel://h:26379,i:26379/mymaster/0",
        "redis+cluster://h:7000,i:7001",
    ],
)
def test_config_accepts_every_url_form(url: str) -> None:
    """[redis] url takes single-server, Sentinel and Cluster URLs alike."""
    cfg = build_config({"redis": {"url": url}}, FLAGS)
    assert cfg.redis is not None and cfg.redis.url == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://h:26379", "needs the master name"),
        ("redis+cluster://h:1/3", "only database 0"),
        ("http://h", "unsupported Redis URL scheme"),
    ],
)
def test_config_rejects_bad_urls_in_one_line_naming_redis_url(url: str, reason: str) -> None:
    """A bad [redis] url is one ConfigError line naming redis.url and the reason."""
    with pytest.raises(ConfigError, match=f"^redis\\.url: .*{reason}") as caught:
        build_config({"redis": {"url": url}}, FLAGS)
    assert "\n" not in str(caught.value)


def test_config_error_never_shows_the_password() -> None:
    """The error for a bad URL with a password in it does not repeat the password."""
    with pytest.raises(ConfigError) as caught:
        build_config({"redis": {"url": "redis+cluster://:hunter2@h:1/5"}}, FLAGS)
    assert "hunter2" not in str(caught.value)


# -- slots ----------------------------------------------------------------------------------


def test_crc16_matches_the_redis_cluster_spec_vector() -> None:
    """CRC16 of "123456789" is 0x31C3, the check value the Redis Cluster spec gives."""
    assert crc16(b"123456789") == 0x31C3


@pytest.mark.parametrize(
    ("key", "slot"),
    # Values from redis-cli CLUSTER KEYSLOT.
    [("foo", 12182), ("bar", 5061), ("{user1000}.following", 3443), ("", 0)],
)
def test_key_slot_matches_redis(key: str, slot: int) -> None:
    """key_slot agrees with what Redis itself answers to CLUSTER KEYSLOT."""
    assert key_slot(key) == slot


def test_hash_tag_rules() -> None:
    """Only the first non-empty {...} is hashed; an empty {} means the whole key."""
    assert hash_tag(b"{user1000}.following") == b"user1000"
    assert hash_tag(b"foo{}{bar}") == b"foo{}{bar}"
    assert hash_tag(b"foo{{bar}}zap") == b"{bar"
    assert hash_tag(b"foo{bar}{zap}") == b"bar"
    assert key_slot("gw:{k}:lease") == key_slot("gw:{k}:result:tok") == key_slot("k")


def test_command_keys_for_what_the_gateway_sends() -> None:
    """Scripts route by KEYS[1], data commands by their key, keyless commands by nothing."""
    assert command_key(["EVALSHA", "abc", 3, "{t}:lease", "{t}:cache", "{t}:r", "arg"]) == (
        "{t}:lease"
    )
    assert command_key(["EVAL", "return 1", "0"]) is None
    for command in (["GET", "k"], ["HSET", "k", "f", "v"], ["ZADD", "k", "1", "m"]):
        assert command_key(command) == "k"
    assert command_key(["PEXPIRE", "k", 10]) == "k"
    for keyless in (["PING"], ["SCRIPT", "LOAD", "x"], ["CLUSTER", "SLOTS"], ["PUBLISH", "c", "m"]):
        assert command_slot(keyless) is None


def test_redirect_replies() -> None:
    """MOVED and ASK replies give kind, slot and address; other errors are not redirects."""
    moved = parse_redirect("MOVED 3999 127.0.0.1:6381")
    assert moved is not None and (moved.kind, moved.slot, moved.address) == (
        "MOVED",
        3999,
        ("127.0.0.1", 6381),
    )
    ask = parse_redirect("ASK 1 [::1]:7000")
    assert ask is not None and (ask.kind, ask.address) == ("ASK", ("::1", 7000))
    for other in ("WRONGTYPE Operation", "CLUSTERDOWN The cluster is down", "MOVED x h:1"):
        assert parse_redirect(other) is None


def test_slot_map_from_cluster_slots() -> None:
    """CLUSTER SLOTS becomes an owner per slot; primaries, replicas and coverage are known."""
    reply = [
        [0, 8191, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
        [8192, 16383, [b"", 7001, b"id2"]],  # an empty host: the node we asked
    ]
    slot_map = SlotMap.from_cluster_slots(reply, default_host="10.0.0.2")
    assert slot_map.owner(0) == slot_map.owner(8191) == ("10.0.0.1", 7000)
    assert slot_map.owner(SLOTS - 1) == ("10.0.0.2", 7001)
    assert slot_map.primaries == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert ("10.0.0.4", 7003) in slot_map.nodes and slot_map.complete
    slot_map.assign(5, ("10.0.0.9", 7009))
    assert slot_map.owner(5) == ("10.0.0.9", 7009) and ("10.0.0.9", 7009) in slot_map.nodes


def test_slot_map_with_a_gap_is_not_complete() -> None:
    """Slots nobody serves leave the map incomplete (the cluster is not fully up)."""
    slot_map = SlotMap.from_cluster_slots([[0, 100, [b"h", 1]]], default_host="h")
    assert not slot_map.complete and slot_map.owner(101) is None


@pytest.mark.parametrize("junk", [None, b"x", [[0, 99999, [b"h", 1]]], [[0, 1]]])
def test_slot_map_rejects_malformed_replies(junk: object) -> None:
    """A reply that is not CLUSTER SLOTS-shaped raises ValueError (the refresh tries the
    next node)."""
    with pytest.raises(ValueError):
        SlotMap.from_cluster_slots(junk, default_host="h")


# -- Sentinel replies -----------------------------------------------------------------------


def test_sentinel_replies() -> None:
    """get-master-addr-by-name and +switch-master messages parse; junk gives None."""
    assert parse_master_address([b"10.0.0.5", b"6380"]) == ("10.0.0.5", 6380)
    assert parse_master_address(None) is None
    assert parse_master_address([b"h", b"port"]) is None
    message = b"gwmaster 127.0.0.1 6379 127.0.0.1 6380"
    assert parse_switch_master(message) == ("gwmaster", ("127.0.0.1", 6380))
    assert parse_switch_master(b"gwmaster 127.0.0.1 6379") is None


# -- RedisConnector.reconnect_now (Clock, a locator that never finds Redis) -----------------


class NowhereLocator:
    """A Locator whose answer the test controls; by default it fails at once."""

    require_master = False

    def __init__(self) -> None:
        self.calls = 0
        self.pending: Deferred[RedisURL] | None = None
        self.hold = False

    def locate(self) -> Deferred[RedisURL]:
        self.calls += 1
        if self.hold:
            self.pending = Deferred()
            return self.pending
        return fail(RedisUnavailable("no master known"))


def test_reconnect_now_cuts_the_backoff_wait_short() -> None:
    """While waiting out a long backoff, reconnect_now() makes the next attempt at once."""
    clock, locator = Clock(), NowhereLocator()
    conn = RedisConnector(locator, clock, backoff=lambda: [10.0] * 100)
    conn.start()
    assert locator.calls == 1
    clock.advance(5)
    assert locator.calls == 1
    conn.reconnect_now()
    assert locator.calls == 2
    clock.advance(9.9)  # the backoff restarted with the new attempt
    assert locator.calls == 2
    clock.advance(0.2)
    assert locator.calls == 3
    conn.stop()


def test_reconnect_now_during_an_attempt_skips_the_next_wait() -> None:
    """An attempt underway is not cancelled; if it fails, the next one follows at once."""
    clock, locator = Clock(), NowhereLocator()
    locator.hold = True
    conn = RedisConnector(locator, clock, backoff=lambda: [10.0] * 100)
    conn.start()
    conn.reconnect_now()
    assert locator.calls == 1 and locator.pending is not None
    locator.hold = False
    locator.pending.errback(RedisUnavailable("stale answer"))
    clock.advance(0)
    assert locator.calls == 2
    clock.advance(9.9)  # and then the ordinary backoff again
    assert locator.calls == 2
    conn.stop()
