"""Redis Sentinel: find the current master, and hear about failovers as they happen.

:class:`SentinelLocator` is the :class:`~gateway.redis.connection.Locator` of a
``redis+sentinel://`` URL. Before every connection attempt it asks the sentinels in turn
(``SENTINEL get-master-addr-by-name``, the one that answered last first, as the Sentinel
client guidelines say) and the connector then checks with ROLE that the server really is
a master. So following a failover needs nothing special: the old master's connection
drops (it died, or Sentinel's reconfiguration killed its clients), the connector retries,
and the first attempt after the promotion reaches the new master.

:class:`SentinelWatcher` makes that first attempt come sooner: it subscribes to
``+switch-master`` on one sentinel and tells the connectors to reconnect at once, instead
of waiting out their backoff (which by then may have grown to seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.redis.connection import RedisConnector, RedisUnavailable, Reply, default_backoff
from gateway.redis.txredis import query_once
from gateway.redis.url import HostPort, RedisURL, SentinelURL

log = Logger(namespace="gateway.cluster")

SWITCH_MASTER = "+switch-master"


class SentinelLocator:
    """Asks the sentinels of ``url`` where its master is (see the module doc)."""

    require_master = True

    def __init__(
        self,
        url: SentinelURL,
        clock: IReactorTime,
        *,
        connect_timeout: float = 1.0,
        reply_timeout: float = 1.0,
    ) -> None:
        self.url = url
        self._reactor = clock
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._order = list(url.sentinels)

    def __str__(self) -> str:
        return str(self.url)

    def locate(self) -> Deferred[RedisURL]:
        return Deferred.fromCoroutine(self._locate())

    async def _locate(self) -> RedisURL:
        problems: list[str] = []
        for sentinel in list(self._order):
            try:
                reply = await query_once(
                    self.url.sentinel(sentinel),
                    self._reactor,
                    "SENTINEL",
                    "get-master-addr-by-name",
                    self.url.master_name,
                    connect_timeout=self._connect_timeout,
                    reply_timeout=self._reply_timeout,
                )
            except CancelledError:  # the connector stopped: ask nobody else
                raise
            except Exception as exc:  # down, refused, timed out, auth: ask the next one
                problems.append(f"{sentinel[0]}:{sentinel[1]}: {exc or type(exc).__name__}")
                continue
            address = parse_master_address(reply)
            if address is None:
                problems.append(f"{sentinel[0]}:{sentinel[1]}: does not know the master")
                continue
            # The sentinel that answered goes first next time.
            self._order.remove(sentinel)
            self._order.insert(0, sentinel)
            return self.url.master(address)
        raise RedisUnavailable(
            f"no sentinel named master {self.url.master_name!r} ({'; '.join(problems)})"
        )


def parse_master_address(reply: Reply) -> HostPort | None:
    """``[host, port]`` of ``SENTINEL get-master-addr-by-name``; None for nil or junk."""
    if not isinstance(reply, list) or len(reply) != 2:
        return None
    host, port = (_text(item) for item in reply)
    if not host or not port.isdigit():
        return None
    return (host, int(port))


def parse_switch_master(message: bytes) -> tuple[str, HostPort] | None:
    """``(master name, new address)`` of a ``+switch-master`` message, None if malformed.

    The message is "<name> <old-ip> <old-port> <new-ip> <new-port>"; the name may not
    contain spaces in Sentinel, so splitting on them is safe.
    """
    fields = message.decode("utf-8", "replace").split(" ")
    if len(fields) != 5 or not fields[4].isdigit():
        return None
    return fields[0], (fields[3], int(fields[4]))


class _RoundRobin:
    """Locator for the watcher's own connection: the next sentinel on every attempt."""

    require_master = False

    def __init__(self, url: SentinelURL) -> None:
        self._url = url
        self._next = 0

    def __str__(self) -> str:
        return str(self._url)

    def locate(self) -> Deferred[RedisURL]:
        sentinels = self._url.sentinels
        address = sentinels[self._next % len(sentinels)]
        self._next += 1
        return succeed(self._url.sentinel(address))


class SentinelWatcher:
    """Subscribes to ``+switch-master`` on one sentinel; reconnects ``targets`` on news.

    A reconnect is asked of every target not already connected to the new master, and of
    every target that is down whenever the watcher (re)subscribes, since a switch may
    have happened while it was not listening.
    """

    def __init__(
        self,
        url: SentinelURL,
        clock: IReactorTime,
        targets: Sequence[RedisConnector],
        *,
        backoff: Callable[[], Iterable[float]] = default_backoff,
    ) -> None:
        self._url = url
        self._targets = list(targets)
        self._conn = RedisConnector(
            _RoundRobin(url), clock, name="redis sentinel", subscriber=True, backoff=backoff
        )
        self._conn.set_message_handler(self._message)
        self._conn.add_state_callback(self._state)
        self.switches = 0  # +switch-master messages seen for our master

    def start(self) -> None:
        self._conn.start()

    def stop(self) -> Deferred[None]:
        return self._conn.stop()

    def _state(self, up: bool) -> None:
        if up:
            d = self._conn.execute("SUBSCRIBE", SWITCH_MASTER)
            d.addCallbacks(self._subscribed, self._subscribe_failed)

    def _subscribed(self, _: Reply) -> None:
        for target in self._targets:
            if not target.is_up:
                target.reconnect_now()

    def _subscribe_failed(self, failure: Failure) -> None:
        log.debug("sentinel SUBSCRIBE failed: {reason}", reason=failure.getErrorMessage())

    def _message(self, channel: bytes, message: bytes) -> None:
        if channel != SWITCH_MASTER.encode():
            return
        switch = parse_switch_master(message)
        if switch is None or switch[0] != self._url.master_name:
            return
        self.switches += 1
        _, address = switch
        log.info(
            "sentinel: master {name} switched to {host}:{port}",
            name=self._url.master_name,
            host=address[0],
            port=address[1],
        )
        for target in self._targets:
            current = target.connected_to
            if current is None or current.address != address:
                target.reconnect_now()


def _text(item: Reply) -> str:
    if isinstance(item, bytes):
        return item.decode("utf-8", "replace")
    return str(item) if item is not None else ""
