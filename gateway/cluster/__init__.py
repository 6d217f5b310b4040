"""Cross-node coordination through Redis: the protocol that makes one call per window.

Owns what the nodes agree on: ``keys`` (the Redis key schema), ``scripts`` (the Lua steps,
each one atomic round trip), ``decision`` (the role a script reply assigns), ``steps`` (one
node's round trips), ``lease`` (renewer, listener), ``envelope`` (the shared result bytes),
``completions`` (pub/sub "leader finished" notices), ``session`` (node liveness),
``follower`` (the follower state machine), ``coordinator`` (:class:`ClusterCoordinator`),
``options``, and the wiring of one node: ``node`` (:class:`ClusterNode`) and ``wiring``
(built from the config, for ``gateway serve``)::

    from gateway.cluster.node import ClusterNode
    node = ClusterNode(url, node_id=..., stats=..., fallback=..., clock=reactor)
    node.start(); coordinator = node.coordinator

How to reach Redis is gateway.redis; what ops read (status, heartbeat) is gateway.ops. Kept
import-free so ``gateway status`` (which reads the key schema) does not load Twisted.

May import: gateway.redis, gateway.ops.heartbeat (node.py only: a node runs its heartbeat),
gateway.config, gateway.contracts, gateway.errors, gateway.observe, gateway.primitives,
gateway.reactors, gateway.stats.
"""
