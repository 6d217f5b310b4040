"""What ops see of a cluster: each node's heartbeat into Redis, and the readers of it.

Owns the ops data in Redis and both its sides: ``heartbeat`` (a node's counters, history
stream and hot keys, written every second; run by a node and by a multi-worker supervisor),
``opskeys`` (the names of history, hot-key and in-flight keys), ``insight`` (readers of in-
flight calls, hot keys and history), ``status`` (``gateway status``, also the dashboard's
data) and ``sections`` (its text). The readers are synchronous (redis-py): one-shot tools.

Kept import-free: ``gateway status`` loads no Twisted. It reads the coordination protocol's
key schema and uses its script runner, so it sits above gateway.cluster, except that a
cluster node (gateway.cluster.node) starts its heartbeat.

May import: gateway.redis, gateway.cluster.keys, gateway.cluster.scripts, gateway.observe,
gateway.reactors, gateway.stats.
"""
