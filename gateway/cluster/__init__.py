"""Cross-node coordination through Redis: leases, shared results, pub/sub, stats keys.

Kept import-free so ``gateway status`` (status.py, redis-py only) does not load Twisted's
Redis client. Wiring for a node lives in node.py::

    from gateway.cluster.node import ClusterNode
    node = ClusterNode(url, node_id=..., stats=..., fallback=..., clock=reactor)
    node.start(); coordinator = node.coordinator

Modules: keys (Redis names), url (Redis URLs), connection (self-healing connection),
scripts (Lua), envelope (shared result bytes), completions (pub/sub notices), decision,
lease (renewer, listener), coordinator (ClusterCoordinator), follower, session, heartbeat,
status (with insight: its readers, sections: its text, opskeys: the names of history,
hot-key and in-flight keys), options; topology (which connections a URL needs), sentinel
(master discovery, +switch-master), slots and shards (Redis Cluster routing), endpoints
(Twisted endpoints), redispy (redis-py client for any URL).
"""
