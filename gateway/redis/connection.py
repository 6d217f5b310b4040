"""One Redis connection that keeps itself up: connect, detect loss, reconnect with backoff.

Everything outside txredis.py sees :class:`RedisCommands`: ``is_up``, state callbacks and
``execute(*args)``, with errors mapped to :class:`RedisUnavailable` (no usable connection:
fall back) and :class:`RedisCommandError` (Redis answered with an error).

Reconnection is ours, not txredisapi's: each attempt (txredis.connect) is a fresh factory
with ``reconnect=False``, and a :class:`~gateway.primitives.RetryingCall` with full-jitter
exponential backoff drives the attempts. That way every up/down transition passes through
one place, which tells the state callbacks (the coordinator switches to local-only
coalescing on them and logs the one warning per change; here only a Redis unreachable at
start is a warning, every later transition is logged at debug level).

Where to connect is asked anew before every attempt (:class:`Locator`): a fixed URL for
redis://, rediss:// and unix://; the sentinels' current master for redis+sentinel://
(sentinel.py); the next cluster node for the pub/sub connection of redis+cluster://.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any, Protocol, TypeAlias, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.primitives import Deadline, Deadlines, RetryingCall, exponential_backoff
from gateway.reactors import DelayedCall, as_clock
from gateway.redis.txredis import RedisCommandError as RedisCommandError  # re-exported
from gateway.redis.txredis import RedisUnavailable as RedisUnavailable  # re-exported
from gateway.redis.txredis import connect, translate
from gateway.redis.url import RedisURL, parse_redis_url

Arg: TypeAlias = str | bytes | int | float
Reply: TypeAlias = bytes | str | int | list["Reply"] | None
StateCallback = Callable[[bool], None]
MessageHandler = Callable[[bytes, bytes], None]  # (channel, message) of a pub/sub message

log = Logger(namespace="gateway.cluster")


class RedisCommands(Protocol):
    """What the coordinator and the heartbeat need from a Redis connection."""

    @property
    def is_up(self) -> bool: ...

    def add_state_callback(self, callback: StateCallback) -> None: ...

    def execute(self, *args: Arg) -> Deferred[Reply]: ...


class ManagedRedis(RedisCommands, Protocol):
    """A RedisCommands its owner starts and stops (a node's command connection)."""

    def start(self) -> None: ...

    def stop(self) -> Deferred[None]: ...


class Locator(Protocol):
    """Where the next connection attempt goes; ``str()`` names the target in log lines."""

    @property
    def require_master(self) -> bool:
        """True: the server found must answer ROLE with "master" (Sentinel)."""
        ...

    def locate(self) -> Deferred[RedisURL]: ...


class FixedURL:
    """The :class:`Locator` of a single-server URL: always the same address."""

    require_master = False

    def __init__(self, url: RedisURL) -> None:
        self.url = url

    def locate(self) -> Deferred[RedisURL]:
        return succeed(self.url)

    def __str__(self) -> str:
        return str(self.url)


def default_backoff() -> Iterable[float]:
    """Reconnect delays: full jitter, 0.1 s doubling up to 5 s."""
    return exponential_backoff(initial=0.1, factor=2.0, max_delay=5.0)


class RedisConnector:
    """A self-healing connection to one Redis server (commands, or pub/sub with ``subscriber``).

    ``url`` is a URL or a :class:`Locator` asked before every attempt. ``clock`` is the
    reactor: it times the backoff and provides TCP for the endpoint. ``start()`` returns
    at once; the connection comes up in the background, retrying forever
    with ``backoff()`` delays until ``stop()``. "Up" means Redis answered a PING, not just
    that TCP connected. ``reply_timeout`` bounds every command; with ``keepalive`` set, an
    idle connection is PINGed that often. A Redis that stops answering (hung, partitioned)
    is treated as down: the connection is aborted and reconnected.
    """

    def __init__(
        self,
        url: str | RedisURL | Locator,
        clock: IReactorTime,
        *,
        name: str = "redis",
        subscriber: bool = False,
        connect_timeout: float = 2.0,
        reply_timeout: float = 2.0,
        keepalive: float | None = 5.0,
        backoff: Callable[[], Iterable[float]] = default_backoff,
    ) -> None:
        if isinstance(url, str):
            url = parse_redis_url(url)
        self._locator: Locator = FixedURL(url) if isinstance(url, RedisURL) else url
        self.connected_to: RedisURL | None = None  # the server of the live connection
        self._reactor = clock
        self._clock = as_clock(clock)
        self._name = name
        self._subscriber = subscriber
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._deadlines = Deadlines(clock, resolution=0.05)
        self._keepalive = keepalive
        self._backoff = backoff
        self._callbacks: list[StateCallback] = []
        self._on_message: MessageHandler | None = None
        self._proto: Any = None  # txredisapi protocol of the live connection
        self._factory: Any = None
        self._retry: RetryingCall[Any] | None = None
        self._ping_timer: DelayedCall | None = None
        self._running = False
        self._attempting = False  # an attempt (locate, connect, PING) is underway
        self._hurry = False  # reconnect_now() during an attempt: no wait before the next
        self._logged_up: bool | None = None  # last state logged, so each change logs once

    @property
    def is_up(self) -> bool:
        return self._proto is not None

    def add_state_callback(self, callback: StateCallback) -> None:
        """``callback(True)`` after every (re)connect, ``callback(False)`` after every loss."""
        self._callbacks.append(callback)

    def set_message_handler(self, handler: MessageHandler) -> None:
        """Where pub/sub messages go (``subscriber=True`` connections only)."""
        self._on_message = handler

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._reconnect()

    def stop(self) -> Deferred[None]:
        """Stop reconnecting and close the connection; fires when it is closed."""
        self._running = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        factory, self._factory = self._factory, None
        self._set_down("stopped")
        if factory is None:
            return succeed(None)
        return cast(Deferred[None], factory.disconnect()).addCallback(lambda _: None)

    def reconnect_now(self) -> None:
        """Connect again at once: drop the live connection, or cut the backoff wait short.

        For news that the server moved (a Sentinel failover): the next attempt asks the
        locator again.
        """
        if not self._running:
            return
        if self._proto is not None:
            self._proto.transport.abortConnection()  # -> _lost -> an immediate attempt
        elif self._attempting:
            # Let the attempt finish (it may well succeed); if it fails, retry at once.
            self._hurry = True
        elif self._retry is not None:
            retry, self._retry = self._retry, None
            retry.cancel()  # its Deferred fails with CancelledError, which _reconnect ignores
            self._reconnect()

    def execute(self, *args: Arg) -> Deferred[Reply]:
        proto = self._proto
        if proto is None:
            return fail(RedisUnavailable(f"{self._name} is down"))
        try:
            # The reply timeout is ours (below), not txredisapi's timer per command.
            d = proto.execute_command(*args, apply_timeout=False)
        except Exception as exc:  # txredisapi raises ConnectionError("Not connected") here
            return fail(RedisUnavailable(str(exc)))
        if not self._subscriber:  # PSUBSCRIBE's reply can sit behind messages: never timed
            # One shared timer for every command's deadline: a command unanswered after
            # reply_timeout means a hung Redis, so the connection is dropped (failing every
            # command on it) and reconnected - as txredisapi's own timeout would.
            deadline = self._deadlines.add(self._reply_timeout, partial(self._hung, proto))
            d.addBoth(_cancelling(deadline))
        return cast(Deferred[Reply], d.addErrback(translate))

    def _hung(self, proto: Any) -> None:
        if proto is self._proto and proto.transport is not None:
            log.debug(
                "{name}: no reply within {t}s; reconnecting", name=self._name, t=self._reply_timeout
            )
            proto.transport.abortConnection()

    # -- connecting -------------------------------------------------------------------

    def _reconnect(self) -> None:
        retry: RetryingCall[Any] = RetryingCall(self._reactor, self._connect_once)
        self._retry = retry
        retry.start(backoff=self._delays(), failure_tester=self._attempt_failed).addCallbacks(
            self._connected,
            lambda _: None,  # only cancellation (stop) ends the retry loop
        )

    def _delays(self) -> Iterator[float]:
        # Pulled by RetryingCall after each failed attempt, so _hurry is read just in time.
        for delay in self._backoff():
            hurry, self._hurry = self._hurry, False
            yield 0.0 if hurry else delay

    def _attempt_failed(self, failure: Failure) -> bool:
        if self._logged_up is not False:
            self._logged_up = False
            log.warn(
                "{name} unreachable at {url}: {reason} (retrying in the background)",
                name=self._name,
                url=str(self._locator),
                reason=failure.getErrorMessage(),
            )
        return True  # retry every failure; only stop() ends the loop

    def _connect_once(self) -> Deferred[Any]:
        def attempt(url: RedisURL) -> Deferred[Any]:
            d = connect(
                url,
                self._reactor,
                subscriber=self._subscriber,
                connect_timeout=self._connect_timeout,
                reply_timeout=self._reply_timeout,
                require_master=self._locator.require_master,
            )
            return d.addCallback(lambda factory: (factory, url))

        def finished(result: object) -> object:
            self._attempting = False
            return result

        self._attempting = True
        return self._locator.locate().addCallback(attempt).addBoth(finished)

    def _connected(self, attempt: tuple[Any, RedisURL]) -> None:
        factory, url = attempt
        self._retry = None
        self._hurry = False  # it succeeded: a later outage starts with the ordinary backoff
        proto = factory.pool[0] if factory.pool else None
        if not self._running or proto is None or not proto.connected:
            factory.disconnect()
            if self._running:  # died between the PING and now: go round again
                self._reconnect()
            return
        self._factory = factory
        if self._subscriber:
            proto.messageReceived = self._message_received
        proto.whenDisconnected().addCallback(lambda _: self._lost(proto))
        self._proto = proto
        self.connected_to = url
        if self._logged_up is not True:
            self._logged_up = True
            log.debug("{name} connected to {url}", name=self._name, url=str(url))
        self._schedule_ping()
        self._notify(True)

    def _schedule_ping(self) -> None:
        if self._keepalive is not None and self._running and self._proto is not None:
            self._ping_timer = self._clock.callLater(self._keepalive, self._ping)

    def _ping(self) -> None:
        self._ping_timer = None
        proto = self._proto
        if proto is None:
            return
        ping = self.execute("PING")
        ping.addTimeout(self._reply_timeout, self._reactor)

        def answered(_: object) -> None:
            if proto is self._proto:
                self._schedule_ping()

        def unanswered(_: Failure) -> None:
            if proto is self._proto:  # abort -> connectionLost -> _lost -> reconnect
                proto.transport.abortConnection()

        ping.addCallbacks(answered, unanswered)

    def _lost(self, proto: Any) -> None:
        if proto is not self._proto:
            return
        factory, self._factory = self._factory, None
        if factory is not None:
            factory.disconnect()  # stops its (non-reconnecting) ClientService for good
        self._set_down("connection lost")
        if self._running:
            self._reconnect()

    def _set_down(self, why: str) -> None:
        if self._ping_timer is not None and self._ping_timer.active():
            self._ping_timer.cancel()
        self._ping_timer = None
        if self._proto is None:
            return
        self._proto = None
        self.connected_to = None
        if self._running and self._logged_up is not False:
            self._logged_up = False
            log.debug("{name} {why}; reconnecting", name=self._name, why=why)
        self._notify(False)

    def _notify(self, up: bool) -> None:
        for callback in list(self._callbacks):
            try:
                callback(up)
            except Exception:
                log.failure("redis state callback failed")

    def _message_received(self, pattern: object, channel: object, message: object) -> None:
        if self._on_message is not None and isinstance(channel, bytes):
            data = message if isinstance(message, bytes) else str(message).encode()
            self._on_message(channel, data)


def _cancelling(deadline: Deadline) -> Callable[[Any], Any]:
    """A pass-through callback that cancels ``deadline`` (the reply is in)."""

    def cancel(result: Any) -> Any:
        deadline.cancel()
        return result

    return cancel
