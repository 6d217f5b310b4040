"""The only module that touches txredisapi (untyped): one connection attempt, error mapping.

An attempt is: a silent probe connect, a fresh ``RedisFactory`` (or ``SubscriberFactory``)
with ``reconnect=False`` started with ``startConnecting(endpoint)`` - the supported way in
txredisapi 1.6 - and a PING that must be answered (plus, for a master found through
Sentinel, a ROLE that must say "master"). It fires with the factory, whose ``pool[0]`` is
the live protocol; reconnecting is the caller's business (connection.py).
:func:`query_once` is one command on a throwaway connection (sentinels, CLUSTER SLOTS).
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from gateway.redis.endpoints import client_endpoint
from gateway.redis.url import RedisURL


class RedisUnavailable(Exception):
    """No usable connection (down, lost mid-command, reply timeout): act as if Redis were gone."""


class RedisCommandError(Exception):
    """Redis answered the command with an error reply (``NOSCRIPT ...``, ``WRONGTYPE ...``)."""


class _Probe(Factory):
    noisy = False  # no "Starting factory" lines per probe
    protocol = Protocol


_PROBE = _Probe()


def connect(
    url: RedisURL,
    reactor: IReactorTime,
    *,
    subscriber: bool,
    connect_timeout: float,
    reply_timeout: float,
    require_master: bool = False,
) -> Deferred[Any]:
    """One attempt; fires with a connected, answering txredisapi factory (cancellable).

    ``require_master``: the server must also say it is a master (ROLE); a sentinel's
    answer can be stale, and writing to a replica only earns READONLY errors.
    """
    # Probe with a bare TCP (or TLS) connect first. Each failed txredisapi attempt makes its
    # ClientService log "Scheduling retry ..." before it can be stopped; a silent probe keeps
    # a long outage down to the one "unreachable" line connection.py logs.
    endpoint: Any = client_endpoint(url, reactor, timeout=connect_timeout)
    attempt: Deferred[Any] = endpoint.connect(_PROBE)
    attempt.addCallback(_start_factory, url, endpoint, subscriber, reply_timeout)
    attempt.addCallback(_verify, reactor, reply_timeout)
    if require_master:
        attempt.addCallback(_verify_master, url, reactor, reply_timeout)
    return attempt


def query_once(
    url: RedisURL, reactor: IReactorTime, *args: Any, connect_timeout: float, reply_timeout: float
) -> Deferred[Any]:
    """Connect, run one command, disconnect; fires with the reply (errors translated)."""

    def run(factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = factory.pool[0].execute_command(*args, apply_timeout=False)
        d.addTimeout(reply_timeout, reactor)

        def close(result: object) -> object:
            factory.disconnect()
            return result

        return d.addBoth(close)

    d = connect(
        url, reactor, subscriber=False, connect_timeout=connect_timeout, reply_timeout=reply_timeout
    )
    return d.addCallback(run).addErrback(translate)


def _start_factory(
    probe: Any, url: RedisURL, endpoint: Any, subscriber: bool, reply_timeout: float
) -> Deferred[Any]:
    probe.transport.loseConnection()
    if subscriber:
        factory = txredisapi.SubscriberFactory()
    else:
        # No SELECT for database 0 (where every connection starts): sentinels have no
        # SELECT at all, and a Redis Cluster only database 0.
        factory = txredisapi.RedisFactory(
            str(url), url.db or None, 1, replyTimeout=reply_timeout, convertNumbers=False
        )
    # Raw bytes in and out: shared payloads are Thrift bytes, not text.
    factory.charset = None
    factory.convertNumbers = False
    factory.password = url.password
    factory.username = url.username
    factory.reconnect = False  # the caller reconnects, so it sees every transition

    def cancel(_: Deferred[Any]) -> None:
        factory.disconnect()

    ready: Deferred[Any] = Deferred(cancel)

    def connected(_: object) -> None:
        if not ready.called:  # not cancelled meanwhile
            ready.callback(factory)

    def failed(reason: Failure) -> None:
        if not ready.called:
            ready.errback(reason)

    factory.deferred.addCallbacks(connected, failed)
    factory.startConnecting(endpoint)
    return ready


def _verify(factory: Any, reactor: IReactorTime, reply_timeout: float) -> Deferred[Any]:
    """Up only once Redis answers: a hung server still accepts TCP connections."""
    proto = factory.pool[0] if factory.pool else None
    if proto is None or not proto.connected:
        factory.disconnect()
        return fail(RedisUnavailable("connection closed right after connecting"))
    ping: Deferred[Any] = proto.execute_command("PING", apply_timeout=False)
    ping.addTimeout(reply_timeout, reactor)

    def unanswered(reason: Failure) -> Failure:
        factory.disconnect()
        return reason

    return ping.addCallbacks(lambda _: factory, unanswered)


def _verify_master(
    factory: Any, url: RedisURL, reactor: IReactorTime, reply_timeout: float
) -> Deferred[Any]:
    role: Deferred[Any] = factory.pool[0].execute_command("ROLE", apply_timeout=False)
    role.addTimeout(reply_timeout, reactor)

    def check(reply: Any) -> Deferred[Any]:
        kind = reply[0] if isinstance(reply, list) and reply else reply
        if kind in (b"master", "master"):
            return succeed(factory)
        factory.disconnect()
        name = kind.decode("ascii", "replace") if isinstance(kind, bytes) else str(kind)
        return fail(RedisUnavailable(f"{url} is a {name}, not a master"))

    def unanswered(reason: Failure) -> Failure:
        factory.disconnect()
        return reason

    return role.addCallbacks(check, unanswered)


def translate(failure: Failure) -> Failure:
    """Map txredisapi's errors onto RedisCommandError / RedisUnavailable."""
    exc = failure.value
    if isinstance(exc, txredisapi.ResponseError):
        raise RedisCommandError(str(exc))
    if isinstance(exc, txredisapi.ConnectionError):  # reply timeouts and lost connections too
        raise RedisUnavailable(str(exc) or "connection lost")
    return failure
