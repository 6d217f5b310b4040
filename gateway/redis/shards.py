"""RedisCommands over a Redis Cluster: one self-healing connection per primary, routed by slot.

txredisapi's Sharded* classes are consistent-hashing clients (and broken on Python 3), so
the routing lives here, over plain :class:`~gateway.redis.connection.RedisConnector`
connections - the same reconnect, keepalive and error mapping as a single Redis.

* **Routing**: every command goes to the primary of its key's slot (slots.py); a script
  by its KEYS[1] (every key of a script shares one hash tag); ``SCRIPT`` goes to every
  primary; keyless commands to any primary that is up.
* **Redirects**: ``MOVED`` updates that slot at once, refreshes the whole map in the
  background and retries on the new owner; ``ASK`` sends ``ASKING`` and the command to
  the importing node back to back (nothing can come between them on that connection).
  At most :data:`MAX_REDIRECTS` hops per command.
* **Slot map**: ``CLUSTER SLOTS`` from a primary that is up, else from any node known
  (the seeds, then every node of the last map) on a throwaway connection. Refreshed at
  start, after MOVED/CLUSTERDOWN, and - with backoff - for as long as the cluster is not
  fully up (a primary died: the map shows its promoted replica once the cluster agrees).
* **Up** means: the map covers all 16384 slots and the connection to every primary in it
  is up. That is Redis's own default (``cluster-require-full-coverage yes``): while a
  shard is gone the cluster refuses commands anyway, and the node serves local-only, its
  followers woken at once by the down transition instead of waiting out a lease.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.primitives import exponential_backoff
from gateway.reactors import DelayedCall, as_clock
from gateway.redis.connection import (
    Arg,
    RedisCommandError,
    RedisConnector,
    RedisUnavailable,
    Reply,
    StateCallback,
    default_backoff,
)
from gateway.redis.slots import BROADCAST, SlotMap, command_name, command_slot, parse_redirect
from gateway.redis.txredis import query_once
from gateway.redis.url import ClusterURL, HostPort, RedisURL

log = Logger(namespace="gateway.cluster")

MAX_REDIRECTS = 5


def refresh_backoff() -> Iterable[float]:
    """Slot map refreshes while the cluster is not fully up: 0.1 s doubling up to 0.5 s.

    One CLUSTER SLOTS per node every half second at most, only while a shard is down: the
    cap bounds how late a node notices the promoted replica.
    """
    return exponential_backoff(initial=0.1, factor=2.0, max_delay=0.5)


class ClusterRedis:
    """A node's command connection to a Redis Cluster (see the module doc)."""

    def __init__(
        self,
        url: ClusterURL,
        clock: IReactorTime,
        *,
        connect_timeout: float = 2.0,
        reply_timeout: float = 2.0,
        keepalive: float | None = 5.0,
        backoff: Callable[[], Iterable[float]] = default_backoff,
        refresh_delays: Callable[[], Iterable[float]] = refresh_backoff,
    ) -> None:
        self.url = url
        self._reactor = clock
        self._clock = as_clock(clock)
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._keepalive = keepalive
        self._backoff = backoff
        self._refresh_delays = refresh_delays
        self._delays: Iterator[float] = iter(refresh_delays())
        self._map: SlotMap | None = None
        self._primaries: dict[HostPort, RedisConnector] = {}
        self._callbacks: list[StateCallback] = []
        self._up = False
        self._running = False
        self._refreshing: Deferred[None] | None = None
        self._refresh_again = False  # asked for while one was underway
        self._refresh_timer: DelayedCall | None = None
        self._logged_unreachable = False
        self.refreshes = 0  # slot maps applied (for tests and debugging)

    # -- RedisCommands ------------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        return self._up

    def add_state_callback(self, callback: StateCallback) -> None:
        self._callbacks.append(callback)

    def execute(self, *args: Arg) -> Deferred[Reply]:
        if command_name(args) in BROADCAST:
            return self._broadcast(args)
        return self._send(args, command_slot(args), 0)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._refresh_soon(0.0)

    def stop(self) -> Deferred[None]:
        self._running = False
        if self._refresh_timer is not None and self._refresh_timer.active():
            self._refresh_timer.cancel()
        self._refresh_timer = None
        if self._refreshing is not None:
            self._refreshing.cancel()
        connectors, self._primaries = list(self._primaries.values()), {}
        self._set_up(False)
        d = gatherResults([c.stop() for c in connectors], consumeErrors=True)
        return d.addCallback(lambda _: None)

    def node_addresses(self) -> tuple[HostPort, ...]:
        """Every node known: primaries first (from the last map), then the rest and seeds."""
        known = self._map.nodes if self._map is not None else ()
        return tuple(dict.fromkeys([*self._primaries, *known, *self.url.seeds]))

    def node_url(self, address: HostPort) -> RedisURL:
        return self.url.node(address)

    # -- routing --------------------------------------------------------------------------

    def _connector(self, slot: int | None) -> RedisConnector | None:
        if slot is None:
            return next((c for c in self._primaries.values() if c.is_up), None)
        owner = self._map.owner(slot) if self._map is not None else None
        return self._primaries.get(owner) if owner is not None else None

    def _send(self, args: tuple[Arg, ...], slot: int | None, hops: int) -> Deferred[Reply]:
        conn = self._connector(slot)
        if conn is None:
            if self._running:
                self._refresh_soon()
            return fail(RedisUnavailable(f"no Redis Cluster primary for slot {slot}"))
        d = conn.execute(*args)
        return d.addErrback(self._redirected, args, slot, hops)

    def _redirected(
        self, failure: Failure, args: tuple[Arg, ...], slot: int | None, hops: int
    ) -> Deferred[Reply]:
        exc = failure.value
        if not isinstance(exc, RedisCommandError):
            return fail(failure)
        message = str(exc)
        redirect = parse_redirect(message)
        if redirect is None:
            if message.startswith(("CLUSTERDOWN", "TRYAGAIN")):
                self._refresh_soon()
            return fail(failure)
        if hops >= MAX_REDIRECTS:
            return fail(RedisUnavailable(f"too many cluster redirects, last: {message}"))
        if redirect.kind == "MOVED":
            if self._map is not None:
                self._map.assign(redirect.slot, redirect.address)
            self._ensure_connector(redirect.address)
            self._set_up(self._complete())  # down until a new owner's connection is up
            self._refresh_soon()
            return self._send(args, redirect.slot, hops + 1)
        # ASK: this one command goes to the importing node, preceded by ASKING.
        conn = self._primaries.get(redirect.address)
        if conn is None or not conn.is_up:
            self._refresh_soon()
            return fail(RedisUnavailable(f"cluster node {redirect.address} not connected"))
        conn.execute("ASKING").addErrback(lambda _: None)  # its error shows in the reply
        return conn.execute(*args).addErrback(self._redirected, args, slot, hops + 1)

    def _broadcast(self, args: tuple[Arg, ...]) -> Deferred[Reply]:
        if not self._primaries:
            return fail(RedisUnavailable("no Redis Cluster primary connected"))
        sent = [conn.execute(*args) for conn in self._primaries.values()]
        d = gatherResults(sent, consumeErrors=True)
        return d.addCallbacks(lambda replies: replies[0], lambda f: f.value.subFailure)

    # -- the slot map ---------------------------------------------------------------------

    def _refresh_soon(self, delay: float | None = None) -> None:
        """Refresh the map after ``delay`` (None: now); coalesced with one underway."""
        if not self._running:
            return
        if self._refreshing is not None:
            self._refresh_again = True
            return
        if self._refresh_timer is not None and self._refresh_timer.active():
            if delay is None or delay > 0:
                return  # one is already scheduled
            self._refresh_timer.cancel()
        self._refresh_timer = self._clock.callLater(delay or 0.0, self._refresh)

    def _refresh(self) -> None:
        self._refresh_timer = None
        d = Deferred.fromCoroutine(self._fetch_map())
        self._refreshing = d
        d.addCallbacks(self._refreshed, self._refresh_failed)

    async def _fetch_map(self) -> None:
        problems: list[str] = []
        for address in self.node_addresses():
            conn = self._primaries.get(address)
            try:
                if conn is not None and conn.is_up:
                    reply = await conn.execute("CLUSTER", "SLOTS")
                else:
                    reply = await query_once(
                        self.url.node(address),
                        self._reactor,
                        "CLUSTER",
                        "SLOTS",
                        connect_timeout=self._connect_timeout,
                        reply_timeout=self._reply_timeout,
                    )
                slot_map = SlotMap.from_cluster_slots(reply, default_host=address[0])
            except CancelledError:  # stop(): ask nobody else
                raise
            except Exception as exc:  # unreachable, not a cluster node, junk: try the next
                problems.append(f"{address[0]}:{address[1]}: {exc or type(exc).__name__}")
                continue
            if not self._running:
                return
            self._apply(slot_map)
            return
        raise RedisUnavailable("; ".join(problems) or "no cluster node known")

    def _refreshed(self, _: None) -> None:
        self._refreshing = None
        self._logged_unreachable = False
        self._next_refresh()

    def _refresh_failed(self, failure: Failure) -> None:
        self._refreshing = None
        if not self._running:
            return
        if not self._logged_unreachable:
            self._logged_unreachable = True
            log.warn(
                "redis cluster unreachable at {url}: {reason} (retrying in the background)",
                url=str(self.url),
                reason=failure.getErrorMessage(),
            )
        self._next_refresh()

    def _next_refresh(self) -> None:
        """While not fully up: again after the next backoff delay. Else again at once only
        if asked to meanwhile (a MOVED may be newer than the map just read)."""
        if not self._running:
            return
        again, self._refresh_again = self._refresh_again, False
        if not self._complete():
            self._refresh_soon(next(self._delays, 0.5))
            return
        self._delays = iter(self._refresh_delays())
        if again:
            self._refresh_soon(0.0)

    def _apply(self, slot_map: SlotMap) -> None:
        self.refreshes += 1
        self._map = slot_map
        wanted = set(slot_map.primaries)
        for address in [a for a in self._primaries if a not in wanted]:
            # No longer a primary (failed over, or removed): forget it before stopping it,
            # so its "down" callback is not taken for an outage.
            self._primaries.pop(address).stop()
        for address in slot_map.primaries:
            self._ensure_connector(address)
        self._set_up(self._complete())

    def _ensure_connector(self, address: HostPort) -> None:
        if address in self._primaries or not self._running:
            return
        conn = RedisConnector(
            self.url.node(address),
            self._reactor,
            name=f"redis cluster node {address[0]}:{address[1]}",
            connect_timeout=self._connect_timeout,
            reply_timeout=self._reply_timeout,
            keepalive=self._keepalive,
            backoff=self._backoff,
        )
        self._primaries[address] = conn
        conn.add_state_callback(lambda up: self._connector_state(conn, up))
        conn.start()

    def _connector_state(self, conn: RedisConnector, up: bool) -> None:
        if not self._running or conn not in self._primaries.values():
            return
        if not up:
            self._refresh_soon()  # a dead primary: watch the map for its replica's promotion
        self._set_up(self._complete())

    def _complete(self) -> bool:
        slot_map = self._map
        if slot_map is None or not slot_map.complete:
            return False
        return all(
            (conn := self._primaries.get(a)) is not None and conn.is_up for a in slot_map.primaries
        )

    def _set_up(self, up: bool) -> None:
        if up == self._up:
            return
        self._up = up
        if up:
            log.debug("redis cluster up: {n} primaries", n=len(self._primaries))
        for callback in list(self._callbacks):
            try:
                callback(up)
            except Exception:
                log.failure("redis state callback failed")


class ClusterNodes:
    """Locator for the pub/sub connection: the next known cluster node on every attempt.

    Classic pub/sub messages reach every node of a cluster, so any node will do; after a
    failed attempt the next one is tried.
    """

    require_master = False

    def __init__(self, cluster: ClusterRedis) -> None:
        self._cluster = cluster
        self._next = 0

    def __str__(self) -> str:
        return str(self._cluster.url)

    def locate(self) -> Deferred[RedisURL]:
        nodes = self._cluster.node_addresses()
        address = nodes[self._next % len(nodes)]
        self._next += 1
        return succeed(self._cluster.node_url(address))
