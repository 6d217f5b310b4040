"""``gateway serve``'s view of the cluster: build a :class:`ClusterNode` from the config.

``gateway.app`` calls ``RedisCluster(config, reactor, stats, fallback=local, spawner=flights)``
and uses ``.coordinator``, ``.mode()`` (``"cluster"``, ``"cluster-polling"`` or ``"local"``
for /healthz and metrics),
``.start()`` and ``.stop()``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from gateway.cluster.coordinator import ClusterCoordinator
from gateway.cluster.node import ClusterNode
from gateway.cluster.options import ClusterOptions
from gateway.config import GatewayConfig
from gateway.contracts import Coordinator, Spawner
from gateway.observe import Observations
from gateway.stats import NodeStats


class RedisCluster:
    """A node's Redis side, configured from ``config.redis`` (which must be set)."""

    def __init__(
        self,
        config: GatewayConfig,
        reactor: Any,
        stats: NodeStats,
        *,
        fallback: Coordinator,
        spawner: Spawner | None = None,
        observations: Observations | None = None,
        publish_node: bool = True,
    ) -> None:
        """``publish_node``: see :class:`ClusterNode` (False in the workers of a node)."""
        redis = config.redis
        if redis is None:
            raise ValueError("RedisCluster needs config.redis")
        secret = redis.hmac_secret.encode() if redis.hmac_secret else None
        options = ClusterOptions(
            prefix=redis.prefix,
            lease_ttl=redis.lease_ttl,
            handoff_ttl=redis.handoff_ttl,
            hmac_secret=secret,
            max_shared_bytes=redis.max_shared_bytes,
            reply_timeout=redis.reply_timeout,
            session_ttl=redis.session_ttl,
        )
        self.node = ClusterNode(
            redis.url,
            node_id=config.node_id,
            stats=stats,
            fallback=fallback,
            clock=reactor,
            options=options,
            spawner=spawner,
            observations=observations,
            publish_node=publish_node,
        )

    @property
    def coordinator(self) -> ClusterCoordinator:
        return self.node.coordinator

    def mode(self) -> str:
        return self.node.coordinator.mode

    def heartbeat_fields(self) -> dict[str, float | str]:
        """The coordinator's own heartbeat fields (a worker reports them to its supervisor)."""
        return self.node.coordinator.heartbeat_fields()

    def set_address(self, address: str) -> None:
        """The address shown by ``gateway status`` (known once the listener is bound)."""
        self.node.heartbeat.address = address

    def start(self) -> None:
        self.node.start()

    def stop(self) -> Deferred[None]:
        return self.node.stop()
