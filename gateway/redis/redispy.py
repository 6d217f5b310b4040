"""A synchronous redis-py client for any Redis URL form (``gateway status``, tests, tools).

redis:// rediss:// unix:// go to ``redis.Redis.from_url`` as before; redis+sentinel://
asks the sentinels for the master (``redis.sentinel.Sentinel.master_for``); and
redis+cluster:// routes every command by slot (``redis.cluster.RedisCluster``), which is
what lets ``gateway status`` read heartbeat keys spread over the shards.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

from gateway.redis.url import ClusterURL, SentinelURL, parse_redis_target

SyncRedis: TypeAlias = "redis.Redis | RedisCluster"


def sync_client(url: str, *, timeout: float = 2.0, **options: Any) -> SyncRedis:
    """A client for ``url`` with connect/read timeouts of ``timeout`` seconds; ``options``
    go to the redis-py client (``decode_responses=True`` ...)."""
    target = parse_redis_target(url)
    timeouts: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    if isinstance(target, SentinelURL):
        sentinel_auth = {"username": target.sentinel_username, "password": target.sentinel_password}
        sentinels = Sentinel(list(target.sentinels), sentinel_kwargs={**sentinel_auth, **timeouts})
        master: redis.Redis = sentinels.master_for(
            target.master_name,
            db=target.db,
            username=target.username,
            password=target.password,
            **timeouts,
            **options,
        )
        return master
    if isinstance(target, ClusterURL):
        return RedisCluster(
            startup_nodes=[
                ClusterNode(host, port)  # type: ignore[no-untyped-call]  # unannotated in redis-py
                for host, port in target.seeds
            ],
            username=target.username,
            password=target.password,
            **timeouts,
            **options,
        )
    client: redis.Redis = redis.Redis.from_url(url, **timeouts, **options)
    return client
