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
from gateway.cluster.coordinator import ClusterCoordinator
from gateway.cluster.keys import KeySchema
from gateway.cluster.options import ClusterOptions
from gateway.cluster.session import SessionKeeper, new_session
from gateway.contracts import Coordinator, Spawner
from gateway.observe import Observations
from gateway.ops.heartbeat import Heartbeat
from gateway.redis.connection import default_backoff
from gateway.redis.topology import open_links
from gateway.redis.url import ClusterURL, RedisTarget, parse_redis_target
from gateway.stats import NodeStats


class ClusterNode:
    """Owns the node's Redis links (commands, pub/sub) and what runs on them."""

    def __init__(
        self,
        url: str | RedisTarget,
        *,
        node_id: str,
        stats: NodeStats,
        fallback: Coordinator,
        clock: IReactorTime,
        options: ClusterOptions | None = None,
        address: str | None = None,
        reply_timeout: float | None = None,
        keepalive: float | None = 5.0,
        backoff: Callable[[], Iterable[float]] = default_backoff,
        spawner: Spawner | None = None,
        observations: Observations | None = None,
        publish_node: bool = True,
    ) -> None:
        """``publish_node=False``: this process is one worker of a node whose supervisor
        writes the node's heartbeat; the worker's own beats carry only its hot keys."""
        self.options = options or ClusterOptions()
        if reply_timeout is None:
            reply_timeout = self.options.reply_timeout
        parsed = parse_redis_target(url) if isinstance(url, str) else url
        # One server, a Sentinel-managed master or a Cluster: see topology.py.
        self._links = open_links(
            parsed, clock, reply_timeout=reply_timeout, keepalive=keepalive, backoff=backoff
        )
        self.redis, self.subscriber = self._links.commands, self._links.subscriber
        keys = KeySchema(self.options.prefix)
        self.session = new_session(node_id)
        self.completions = Completions(self.subscriber, keys, clock, session=self.session)
        one_server = not isinstance(parsed, ClusterURL)
        self.coordinator = ClusterCoordinator(
            self.redis,
            self.completions,
            node_id=node_id,
            fallback=fallback,
            clock=clock,
            options=self.options,
            keys=keys,
            spawner=spawner,
            session=self.session,
            # In a Redis Cluster, PUBSUB NUMSUB counts only one node's subscribers: there a
            # leader's death is seen by its session's expiry alone.
            pubsub_counts=one_server,
            per_slot=not one_server,
        )
        self.session_keeper = SessionKeeper(
            self.redis, keys, self.session, clock, self.options.session_ttl, client_id=one_server
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
            publish_node=publish_node,
        )
        self._ready_waiters: list[Deferred[None]] = []
        self.redis.add_state_callback(self._state_changed)
        self.completions.add_state_callback(self._state_changed)

    def start(self) -> None:
        self._links.start()
        self.completions.start()
        self.session_keeper.start()
        self.heartbeat.start()

    def stop(self) -> Deferred[None]:
        """Stop coordinating, then close both connections once the writes underway are in."""
        self.heartbeat.stop()

        def close(_: object) -> Deferred[None]:
            # The session goes only now: until the drain (before this) finished, other nodes
            # must see a live leader, not take its calls over.
            ended = self.session_keeper.stop()
            return ended.addBoth(lambda _: close_connections())

        def close_connections() -> Deferred[None]:
            d = gatherResults([self._links.stop(), self.completions.stop()], consumeErrors=True)
            return d.addCallback(lambda _: None)

        return self.coordinator.stop().addCallback(close)

    def when_ready(self) -> Deferred[None]:
        """Fires once the coordinator is in full cluster mode, notices included (at once if
        it is)."""
        if self.coordinator.mode == "cluster":
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        return d

    def _state_changed(self, _: bool) -> None:
        if self.coordinator.mode == "cluster":
            waiters, self._ready_waiters = self._ready_waiters, []
            for d in waiters:
                d.callback(None)
