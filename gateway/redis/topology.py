"""A node's two Redis links for any URL form: the command connection and the pub/sub one.

===================  ==========================================  ===========================
URL                  commands (RedisCommands)                    pub/sub (Completions)
===================  ==========================================  ===========================
redis/rediss/unix    one RedisConnector                          one RedisConnector
redis+sentinel       RedisConnector to the sentinels' master     same, to the master
                     (+ a SentinelWatcher on +switch-master)
redis+cluster        ClusterRedis: one connector per primary,    RedisConnector to any node
                     routed by slot                              (classic pub/sub is
                                                                 cluster-wide)
===================  ==========================================  ===========================

The coordinator and the heartbeat only see ``links.commands`` as RedisCommands, so they
behave the same whatever the topology.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime

from gateway.redis.connection import Locator, ManagedRedis, RedisConnector, default_backoff
from gateway.redis.sentinel import SentinelLocator, SentinelWatcher
from gateway.redis.shards import ClusterNodes, ClusterRedis
from gateway.redis.url import ClusterURL, RedisTarget, RedisURL, SentinelURL


@dataclass
class RedisLinks:
    """``commands`` and ``subscriber`` for one node; ``helpers`` run next to them.

    ``start()``/``stop()`` cover ``commands`` and the helpers; the subscriber belongs to
    the node's Completions, which starts and stops it.
    """

    commands: ManagedRedis
    subscriber: RedisConnector
    helpers: list[SentinelWatcher] = field(default_factory=list)

    def start(self) -> None:
        self.commands.start()
        for helper in self.helpers:
            helper.start()

    def stop(self) -> Deferred[None]:
        stopping = [self.commands.stop(), *(helper.stop() for helper in self.helpers)]
        return gatherResults(stopping, consumeErrors=True).addCallback(lambda _: None)


def open_links(
    target: RedisTarget,
    clock: IReactorTime,
    *,
    reply_timeout: float = 2.0,
    keepalive: float | None = 5.0,
    backoff: Callable[[], Iterable[float]] = default_backoff,
) -> RedisLinks:
    """Build (not start) the links for ``target``."""

    def connector(where: RedisURL | Locator, name: str, subscriber: bool) -> RedisConnector:
        return RedisConnector(
            where,
            clock,
            name=name,
            subscriber=subscriber,
            reply_timeout=reply_timeout,
            keepalive=keepalive,
            backoff=backoff,
        )

    if isinstance(target, SentinelURL):
        locator = SentinelLocator(target, clock)
        commands = connector(locator, "redis", False)
        subscriber = connector(locator, "redis pub/sub", True)
        watcher = SentinelWatcher(target, clock, [commands, subscriber], backoff=backoff)
        return RedisLinks(commands, subscriber, [watcher])
    if isinstance(target, ClusterURL):
        cluster = ClusterRedis(
            target, clock, reply_timeout=reply_timeout, keepalive=keepalive, backoff=backoff
        )
        return RedisLinks(cluster, connector(ClusterNodes(cluster), "redis pub/sub", True))
    return RedisLinks(connector(target, "redis", False), connector(target, "redis pub/sub", True))
