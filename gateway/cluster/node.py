"""One node's cluster wiring in one object: connections, completions, coordinator, heartbeat.

Typical use (``gateway serve``)::

    node = ClusterNode(url, node_id="gw-1", stats=stats, fallback=local, clock=reactor)
    node.start()                       # returns at once; Redis comes up in the background
    proxy = Proxy(..., coordinator=node.coordinator)
    ...
    yield node.stop()                  # on shutdown
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime

from gateway.cluster.completions import Completions
from gateway.cluster.connection import RedisConnector, default_backoff
from gateway.cluster.coordinator import ClusterCoordinator
from gateway.cluster.heartbeat import Heartbeat
from gateway.cluster.keys import KeySchema
from gateway.cluster.options import ClusterOptions
from gateway.cluster.url import RedisURL, parse_redis_url
from gateway.contracts import Coordinator
from gateway.observe import Observations
from gateway.stats import NodeStats


class ClusterNode:
    """Owns the node's two Redis connections (commands, pub/sub) and what runs on them."""

    def __init__(
        self,
        url: str | RedisURL,
        *,
        node_id: str,
        stats: NodeStats,
        fallback: Coordinator,
        clock: IReactorTime,
        options: ClusterOptions | None = None,
        address: str | None = None,
        reply_timeout: float = 2.0,
        keepalive: float | None = 5.0,
        backoff: Callable[[], Iterable[float]] = default_backoff,
        observations: Observations | None = None,
    ) -> None:
        self.options = options or ClusterOptions()
        parsed = parse_redis_url(url) if isinstance(url, str) else url
        self.redis, self.subscriber = (
            RedisConnector(
                parsed,
                clock,
                name=name,
                subscriber=subscriber,
                reply_timeout=reply_timeout,
                keepalive=keepalive,
                backoff=backoff,
            )
            for name, subscriber in (("redis", False), ("redis pub/sub", True))
        )
        keys = KeySchema(self.options.prefix)
        self.completions = Completions(self.subscriber, keys, clock)
        self.coordinator = ClusterCoordinator(
            self.redis,
            self.completions,
            node_id=node_id,
            fallback=fallback,
            clock=clock,
            options=self.options,
            keys=keys,
        )
        self.heartbeat = Heartbeat(
            self.redis,
            stats,
            node_id=node_id,
            clock=clock,
            keys=keys,
            address=address,
            extra=self.coordinator.heartbeat_fields,
            observations=observations,
        )
        self._ready_waiters: list[Deferred[None]] = []
        self.redis.add_state_callback(self._state_changed)
        self.completions.add_state_callback(self._state_changed)

    def start(self) -> None:
        self.redis.start()
        self.completions.start()
        self.heartbeat.start()

    def stop(self) -> Deferred[None]:
        self.coordinator.stop()
        self.heartbeat.stop()
        d = gatherResults([self.redis.stop(), self.completions.stop()], consumeErrors=True)
        return d.addCallback(lambda _: None)

    def when_ready(self) -> Deferred[None]:
        """Fires once the coordinator is in cluster mode (at once if it is)."""
        if self.coordinator.cluster_mode:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        return d

    def _state_changed(self, _: bool) -> None:
        if self.coordinator.cluster_mode:
            waiters, self._ready_waiters = self._ready_waiters, []
            for d in waiters:
                d.callback(None)
