"""Unit tests (no Redis) for the cluster package's pure parts: URLs, envelopes, keys, parsing."""

from __future__ import annotations

import dataclasses

import pytest
from thrift.Thrift import TType
from thrift_messages import message
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gateway.cluster.completions import parse_notice
from gateway.cluster.decision import Decision, UnexpectedReply, parse_decision
from gateway.cluster.envelope import (
    Envelope,
    EnvelopeError,
    EnvelopeExpired,
    EnvelopeRejected,
    decode,
    encode,
)
from gateway.cluster.keys import BUCKETS, KeySchema, all_buckets, bucket_of
from gateway.cluster.lease import NoticeListener
from gateway.cluster.options import ClusterOptions
from gateway.cluster.session import (
    client_ids,
    key_ttl_ms,
    new_session,
    node_of,
    reading,
    renewing_client,
    session_of,
)
from gateway.contracts import BackendReply, MethodPolicy, ReplyKind
from gateway.redis.connection import RedisUnavailable
from gateway.redis.url import InvalidRedisURL, RedisURL, parse_redis_url
from gateway.thrift import ProtocolKind

KEY = "Svc.get:0123456789abcdef0123456789abcdef"
TOKEN = "a" * 32
REPLY = BackendReply(b"\x80\x01\x00\x02\x00\x00\x00\x03get\n\x00", "binary", ReplyKind.SUCCESS)
SECRET = b"secret"

# -- url.py -------------------------------------------------------------------------------


def test_url_defaults() -> None:
    """A bare redis:// URL means localhost:6379, database 0, no auth, no TLS."""
    assert parse_redis_url("redis://") == RedisURL()


def test_url_host_port_db_and_password() -> None:
    """Host, port, database and a percent-encoded password are all taken from the URL."""
    url = parse_redis_url("redis://:p%40ss@redis.internal:7000/3")
    assert (url.host, url.port, url.db, url.password, url.username) == (
        "redis.internal",
        7000,
        3,
        "p@ss",
        None,
    )


def test_url_username_and_password() -> None:
    """An ACL user name is kept next to the password."""
    url = parse_redis_url("redis://gw:pw@h/0")
    assert (url.username, url.password) == ("gw", "pw")


def test_url_str_hides_password() -> None:
    """Printing a URL never shows the password."""
    url = parse_redis_url("redis://gw:topsecret@h:1/2")
    assert str(url) == "redis://gw:***@h:1/2"
    assert "topsecret" not in repr(url)


def test_rediss_means_tls_with_verification() -> None:
    """rediss:// turns TLS on and verifies the server certificate by default."""
    url = parse_redis_url("rediss://h:6380")
    assert (url.tls, url.verify, url.port) == (True, True, 6380)


def test_rediss_cert_reqs_none_disables_verification() -> None:
    """ssl_cert_reqs=none keeps TLS but skips certificate checks."""
    url = parse_redis_url("rediss://h?ssl_cert_reqs=none")
    assert (url.tls, url.verify) == (True, False)


def test_rediss_endpoint_wraps_tcp_in_tls() -> None:
    """A TLS URL gives an endpoint that wraps the TCP one (plain URLs give TCP itself)."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import HostnameEndpoint

    from gateway.redis.endpoints import client_endpoint

    # Nothing connects: building an endpoint only needs the reactor's name resolver.
    assert isinstance(client_endpoint(parse_redis_url("redis://h"), reactor), HostnameEndpoint)
    tls = client_endpoint(parse_redis_url("rediss://h?ssl_cert_reqs=none"), reactor)
    assert not isinstance(tls, HostnameEndpoint)
    assert isinstance(tls._wrappedEndpoint, HostnameEndpoint)


def test_unix_url() -> None:
    """unix:// URLs name a socket path and take the database from ?db=."""
    url = parse_redis_url("unix:///run/redis.sock?db=2")
    assert (url.unix_path, url.db) == ("/run/redis.sock", 2)


@pytest.mark.parametrize(
    "bad",
    ["http://h", "redis://h/x", "redis://h:notaport", "unix://", "rediss://h?ssl_cert_reqs=x"],
)
def test_bad_urls_are_rejected(bad: str) -> None:
    """Unsupported schemes, non-numeric databases or ports and bad TLS options raise."""
    with pytest.raises(InvalidRedisURL):
        parse_redis_url(bad)


# -- envelope.py --------------------------------------------------------------------------


def test_reply_kind_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply's kind, asked by may_cache and again by the envelope, is decoded once."""
    import gateway.contracts

    decoded: list[bytes] = []
    real = gateway.contracts.reply_kind

    def counting(message: bytes, *args: object, **kwargs: object) -> ReplyKind:
        decoded.append(message)
        return real(message, *args, **kwargs)  # type: ignore[arg-type]  # passed through

    monkeypatch.setattr(gateway.contracts, "reply_kind", counting)
    success = message(ProtocolKind.BINARY, "get", [(0, TType.STRING, b"x")], mtype=2)
    reply = BackendReply(success, "binary")
    assert MethodPolicy(mode="cache", ttl=1).may_cache(reply)
    assert reply.kind is ReplyKind.SUCCESS
    assert len(decoded) == 1


def test_envelope_roundtrip_keeps_reply_bytes() -> None:
    """An ok envelope decodes to the very same reply message, protocol and kind."""
    assert decode(encode(Envelope.ok(TOKEN, REPLY), KEY), KEY) == Envelope.ok(TOKEN, REPLY)


def test_error_envelope_roundtrip() -> None:
    """An error envelope carries the leader's code and message."""
    data = encode(Envelope.error(TOKEN, 6, "backend down\nreally"), KEY)
    assert decode(data, KEY) == Envelope.error(TOKEN, 6, "backend down\nreally")


def test_skip_envelope_roundtrip() -> None:
    """A "not shared" envelope says why."""
    assert decode(encode(Envelope.skip(TOKEN, "too_large"), KEY), KEY).why == "too_large"


def test_signed_envelope_verifies() -> None:
    """A signed envelope decodes with the same secret."""
    data = encode(Envelope.ok(TOKEN, REPLY), KEY, SECRET)
    assert decode(data, KEY, SECRET).reply == REPLY


def test_tampered_payload_is_rejected() -> None:
    """Changing one payload byte of a signed envelope makes verification fail."""
    data = bytearray(encode(Envelope.ok(TOKEN, REPLY), KEY, SECRET))
    data[-1] ^= 0xFF
    with pytest.raises(EnvelopeRejected):
        decode(bytes(data), KEY, SECRET)


def test_tampered_header_is_rejected() -> None:
    """Changing the header (here the token) of a signed envelope makes verification fail."""
    data = encode(Envelope.ok(TOKEN, REPLY), KEY, SECRET).replace(TOKEN.encode(), b"b" * 32)
    with pytest.raises(EnvelopeRejected):
        decode(data, KEY, SECRET)


def test_envelope_for_another_key_is_rejected() -> None:
    """A signed envelope cannot be replayed under a different call key."""
    data = encode(Envelope.ok(TOKEN, REPLY), KEY, SECRET)
    with pytest.raises(EnvelopeRejected):
        decode(data, KEY + "x", SECRET)


def test_unsigned_envelope_is_rejected_when_a_secret_is_set() -> None:
    """A node with a secret refuses unsigned envelopes."""
    with pytest.raises(EnvelopeRejected):
        decode(encode(Envelope.ok(TOKEN, REPLY), KEY), KEY, SECRET)


def test_signed_envelope_past_its_expiry_is_refused() -> None:
    """A correctly signed but expired envelope (an old entry written back) is refused once
    max_clock_skew has passed too; before that, and without a secret, it is accepted."""
    env = dataclasses.replace(Envelope.ok(TOKEN, REPLY, fence=3), expires_ms=1_000_000)
    signed = encode(env, KEY, SECRET)
    assert decode(signed, KEY, SECRET, now_ms=1_005_000, max_skew_ms=10_000).fence == 3
    with pytest.raises(EnvelopeExpired):
        decode(signed, KEY, SECRET, now_ms=1_010_001, max_skew_ms=10_000)
    assert decode(encode(env, KEY), KEY, now_ms=9_999_999).expires_ms == 1_000_000


def test_expiry_and_fence_are_signed() -> None:
    """Editing the expiry (or fence) of a signed envelope breaks its signature."""
    env = dataclasses.replace(Envelope.ok(TOKEN, REPLY, fence=3), expires_ms=1_000_000)
    forged = encode(env, KEY, SECRET).replace(b'"x":1000000', b'"x":9000000')
    with pytest.raises(EnvelopeRejected):
        decode(forged, KEY, SECRET, now_ms=2_000_000)


def test_wrong_secret_is_rejected() -> None:
    """An envelope signed with another secret is refused."""
    with pytest.raises(EnvelopeRejected):
        decode(encode(Envelope.ok(TOKEN, REPLY), KEY, b"other"), KEY, SECRET)


@pytest.mark.parametrize(
    "garbage", [b"", b"hello", b"GWE9 -\n{}\n", b"GWE1 -\n{not json\n", b'GWE1 -\n{"s":"ok"}\n']
)
def test_garbage_is_not_an_envelope(garbage: bytes) -> None:
    """Truncated, foreign or incomplete bytes raise EnvelopeError."""
    with pytest.raises(EnvelopeError):
        decode(garbage, KEY)


# -- keys.py ------------------------------------------------------------------------------


def test_all_keys_of_a_call_share_its_bucket_hash_tag() -> None:
    """Lease, fence, result, cache and channel of one call carry its bucket as hash tag."""
    keys = KeySchema()
    b = bucket_of(KEY)
    names = [keys.lease(KEY), keys.fence(KEY), keys.result(KEY, TOKEN), keys.cache(KEY)]
    assert all(name.startswith(f"gw:{{{b}}}:{KEY}:") for name in names)
    assert keys.done(KEY) == f"gw:{{{b}}}:done"


def test_buckets_spread_keys() -> None:
    """Buckets are two hex digits below 0x40, and many keys use most of them."""
    seen = {bucket_of(f"svc.m:{i:032x}") for i in range(2000)}
    assert seen <= set(all_buckets()) and len(seen) == BUCKETS


def test_key_names() -> None:
    """The schema's names are the documented ones."""
    keys = KeySchema("p:")
    b = bucket_of("k")
    assert (keys.lease("k"), keys.result("k", "t"), keys.cache("k"), keys.fence("k")) == (
        f"p:{{{b}}}:k:lease",
        f"p:{{{b}}}:k:result:t",
        f"p:{{{b}}}:k:cache",
        f"p:{{{b}}}:k:fence",
    )
    assert (keys.node("n1"), keys.nodes()) == ("p:node:{n1}", "p:nodes")


def test_done_channels_are_recognised() -> None:
    """Bucket done channels are recognised; other channels are not."""
    keys = KeySchema()
    assert keys.is_done(keys.done(KEY))
    assert not keys.is_done("gw:{x}:lease")
    assert not keys.is_done("other:{x}:done")


def test_done_pattern_escapes_glob_characters_in_the_prefix() -> None:
    """A prefix with glob characters is escaped in the PSUBSCRIBE pattern."""
    assert KeySchema("gw:").done_pattern() == "gw:{*}:done"
    assert KeySchema("a*b?:").done_pattern() == "a\\*b\\?:{*}:done"


def test_prefix_with_braces_is_refused() -> None:
    """A brace in the prefix would move the hash tag, so it is refused."""
    with pytest.raises(ValueError):
        KeySchema("gw{x}:")


# -- decision / notices / options -----------------------------------------------------------


def test_lead_decision_parses_token_and_fence() -> None:
    """A lead reply gives the new token and its fencing number."""
    assert parse_decision([b"lead", TOKEN.encode(), 7]) == Decision("lead", token=TOKEN, fence=7)


def test_follow_decision_parses_token_and_lease_time() -> None:
    """A follow reply gives the leader's token and its lease's remaining milliseconds."""
    assert parse_decision([b"follow", TOKEN.encode(), 420]) == Decision(
        "follow", token=TOKEN, lease_ms=420
    )


def test_unexpected_decision_reply_raises() -> None:
    """Replies of an unknown shape raise UnexpectedReply instead of being guessed at."""
    for reply in (None, b"lead", [b"nope"], [b"lead"], [b"cache", 3]):
        with pytest.raises(UnexpectedReply):
            parse_decision(reply)


def test_notice_parsing() -> None:
    """COMPLETE publishes ``<token> <n> <key>[<envelope>]``; keys may hold spaces and newlines."""
    key = "b.odd name\n:0123456789abcdef0123456789abcdef"
    raw_key = key.encode()
    head = TOKEN.encode() + b" " + str(len(raw_key)).encode() + b" " + raw_key
    assert parse_notice(head + b"GWE1 -\na\nb") == (key, TOKEN, b"GWE1 -\na\nb")
    assert parse_notice(head) == (key, TOKEN, None)
    assert parse_notice(b"garbage") is None
    assert parse_notice(TOKEN.encode() + b" 99 short") is None


def test_options_reject_non_positive_lease() -> None:
    """A zero lease_ttl is refused at construction."""
    with pytest.raises(ValueError):
        ClusterOptions(lease_ttl=0)


# -- lease.NoticeListener -----------------------------------------------------------------


def test_listener_wait_times_out_and_keeps_listening() -> None:
    """A timed wait ends with False, and the notice still arrives for the next wait."""
    clock, waiter = Clock(), Deferred[bytes | None]()
    listener = NoticeListener(waiter, clock)
    first = listener.wait(1.0)
    clock.advance(1.0)
    assert first.result is False
    second = listener.wait(1.0)
    waiter.callback(b"env")
    assert second.result is True
    assert listener.result == b"env"


def test_listener_reports_failures_as_results() -> None:
    """A failed waiter (Redis gone) wakes the wait and is handed over as a Failure."""
    clock, waiter = Clock(), Deferred[bytes | None]()
    listener = NoticeListener(waiter, clock)
    woken = listener.wait(5.0)
    waiter.errback(RedisUnavailable("down"))
    assert woken.result is True
    result = listener.result
    assert isinstance(result, Failure) and result.check(RedisUnavailable)


def test_listener_cancel_cancels_the_waiter() -> None:
    """Cancelling the listener cancels its registration."""
    waiter = Deferred[bytes | None]()
    NoticeListener(waiter, Clock()).cancel()
    assert waiter.called


# -- session readings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pttl", "subscribers", "seen"),
    [
        (-2, 1, "dead"),  # the key lapsed: no renewal for a whole session_ttl
        (-2, None, "dead"),
        (1300, 1, "alive"),  # renewed 100 ms ago, connection open
        (1300, 0, "alive"),  # connection closed, but renewed 100 ms ago: a pub/sub blip
        (900, 0, "suspect"),  # closed and a renewal (every 400 ms) overdue: killed, or
        # paused while its pub/sub reconnects - the renewing connection tells which
        (900, 1, "alive"),  # overdue but still subscribed: paused or slow, not dead
        (10, 1, "alive"),  # nearly lapsed: only the lapse itself is death
        (900, None, "alive"),  # no subscriber counts (Redis Cluster): only the TTL decides
        (-1, 0, "alive"),  # no expiry at all: not a session key we wrote; never "dead"
    ],
)
def test_session_readings(pttl: int, subscribers: int | None, seen: str) -> None:
    """Only a lapsed session key is death on its own; nobody subscribed plus an overdue
    renewal is only a suspect (confirmed by the renewing connection being gone)."""
    assert reading(pttl, subscribers, key_ms=1400, renew_ms=400) == seen


def test_the_session_key_always_has_a_whole_session_ttl_left() -> None:
    """Each renewal sets session_ttl plus one renewal interval: just before the next
    renewal the key still outlives any pause shorter than session_ttl."""
    assert key_ttl_ms(1.0) == 1400
    assert key_ttl_ms(2.5) == 3500


def test_client_list_and_session_values_are_parsed() -> None:
    """CLIENT LIST replies give their ids; a session key's value its client id or None."""
    listing = b"id=7 addr=127.0.0.1:1 fd=8 name=\nid=12 addr=127.0.0.1:2 fd=9 name=\n"
    assert client_ids(listing) == {7, 12}
    assert client_ids(b"") == set() and client_ids(None) == set()
    assert renewing_client(b"42") == 42
    assert renewing_client(b"-") is None and renewing_client(b"1x") is None
    assert renewing_client(None) is None


def test_tokens_name_their_session_and_node() -> None:
    """Lease tokens are <session>/<random>, sessions <node_id>.<boot nonce>."""
    session = new_session("gw.1")
    assert session.startswith("gw.1.") and new_session("gw.1") != session
    token = f"{session}/0123abcd"
    assert (session_of(token), node_of(token)) == (session, "gw.1")
    assert node_of("legacy-token") == ""
