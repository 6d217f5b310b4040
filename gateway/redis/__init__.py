"""The Redis client layer: URLs, connections that keep themselves up, Sentinel and Cluster.

Owns everything that knows how to reach Redis, and nothing of what the gateway stores there:
``url`` (every URL form -> settings; standard library only, so config validation and
``gateway status`` load no Twisted), ``endpoints`` (Twisted TCP/TLS/UNIX endpoints),
``txredis`` (the only module touching txredisapi: one attempt, error mapping),
``connection`` (:class:`RedisCommands`, one self-healing connection), ``sentinel`` (master
discovery, +switch-master), ``slots`` and ``shards`` (Redis Cluster routing), ``topology``
(the command and pub/sub links a URL needs) and ``redispy`` (a synchronous redis-py client
for any URL form, for one-shot tools).

Kept import-free, like every package here: importing ``gateway.redis.url`` loads url.py only.

May import: gateway.primitives, gateway.reactors.
"""
