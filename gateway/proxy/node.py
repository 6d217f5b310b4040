"""A gateway node: backends, handler, client listener and admin endpoint, started and drained.

The coordinator is handed in (local-only or Redis-backed), so this module never imports the
cluster layer; ``gateway.app`` chooses and wires it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from gateway.config import GatewayConfig
from gateway.contracts import Coordinator
from gateway.primitives import DeferredPool
from gateway.proxy.admin import admin_site
from gateway.proxy.backend import Backend
from gateway.proxy.connections import ClientLimits
from gateway.proxy.handler import CallHandler
from gateway.proxy.metrics import Metrics
from gateway.proxy.router import Router
from gateway.proxy.server import GatewayFactory
from gateway.proxy.upstream import UpstreamPool
from gateway.reactors import ListeningPort, as_reactor
from gateway.stats import NodeStats
from gateway.thrift import Limits, ProtocolKind, TransportKind

log = logging.getLogger("gateway.node")


@dataclass(frozen=True)
class DrainSummary:
    drained: bool
    abandoned: int
    stats: NodeStats

    def line(self, node_id: str) -> str:
        s = self.stats
        state = (
            "drained" if self.drained else f"drain timed out, {self.abandoned} call(s) abandoned"
        )
        return (
            f"gateway {node_id} stopped: {state}; calls={s.calls} backend_calls={s.backend_calls} "
            f"coalesced_local={s.coalesced_local} coalesced_remote={s.coalesced_remote} "
            f"cache_hits={s.cache_hits} errors={s.errors}"
        )


def build_backends(config: GatewayConfig, reactor: Any, limits: Limits) -> dict[str, Backend]:
    backends = {}
    for name, cfg in config.backends.items():
        pools = [
            UpstreamPool(
                reactor,
                addr.host,
                addr.port,
                transport=TransportKind(cfg.transport),
                protocol=ProtocolKind(cfg.protocol),
                limits=limits,
                connections=cfg.connections,
                connect_timeout=cfg.connect_timeout,
                max_concurrency=cfg.max_concurrency,
                queue_size=cfg.queue_size,
            )
            for addr in cfg.addresses
        ]
        backends[name] = Backend(name, pools, reactor, hedge_after=cfg.hedge_after)
    return backends


class GatewayNode:
    def __init__(
        self,
        config: GatewayConfig,
        reactor: Any,
        coordinator: Coordinator,
        stats: NodeStats | None = None,
        mode: Callable[[], str] = lambda: "disabled",
    ) -> None:
        self.config = config
        self.stats = stats or NodeStats()
        self._reactor = as_reactor(reactor)
        self._mode = mode
        self.limits = Limits(
            max_frame_size=config.max_frame_size,
            max_depth=config.max_depth,
            max_collection_size=config.max_collection_size,
        )
        self.backends = build_backends(config, reactor, self.limits)
        self.metrics = Metrics(self.stats, config.node_id, mode)
        self.handler = CallHandler(
            Router(config),
            self.backends,
            coordinator,
            self.stats,
            reactor,
            self.limits,
            self.metrics,
        )
        self.calls = DeferredPool(reactor)
        self.factory = GatewayFactory(
            self.handler,
            self.limits,
            self.calls,
            clock=reactor,
            stats=self.stats,
            client_limits=ClientLimits(
                max_pipelined=config.max_pipelined,
                max_unsent_bytes=config.max_unsent_bytes,
                idle_timeout=config.idle_timeout,
                max_connections=config.max_connections,
            ),
        )
        self.port: ListeningPort | None = None
        self.admin_port: ListeningPort | None = None

    def health(self) -> dict[str, object]:
        return {
            "listening": self.port is not None,
            "node_id": self.config.node_id,
            "redis": self._mode(),
            "in_flight": self.stats.in_flight,
        }

    def start(self) -> None:
        """Listen (raises CannotListenError if a port is taken) and connect to backends."""
        listen = self.config.listen
        # A large backlog: a herd of clients connects at once, and the default 50 stalls them.
        self.port = self._reactor.listenTCP(
            listen.port, self.factory, backlog=1024, interface=listen.host
        )
        if self.config.admin is not None:
            site = admin_site(self.metrics, self.health)
            admin = self.config.admin
            try:
                self.admin_port = self._reactor.listenTCP(admin.port, site, interface=admin.host)
            except Exception:
                self.port.stopListening()
                self.port = None
                raise
        for backend in self.backends.values():
            backend.start()

    @property
    def listen_port(self) -> int:
        assert self.port is not None
        port: int = self.port.getHost().port
        return port

    @property
    def admin_listen_port(self) -> int:
        assert self.admin_port is not None
        port: int = self.admin_port.getHost().port
        return port

    def stop(self, drain_timeout: float) -> Deferred[DrainSummary]:
        """Stop accepting, wait up to ``drain_timeout`` for in-flight calls, then close."""
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        drained = self.calls.notify_when_empty(timeout=drain_timeout)

        def finish(result: object) -> DrainSummary:
            ok = result is None
            abandoned = len(self.calls)
            if not ok:
                log.warning(
                    "drain timed out after %gs with %d call(s) in flight", drain_timeout, abandoned
                )
            for backend in self.backends.values():
                backend.stop()
            if self.admin_port is not None:
                self.admin_port.stopListening()
                self.admin_port = None
            return DrainSummary(ok, abandoned, self.stats)

        def timed_out(reason: Any) -> object:
            reason.trap(defer.TimeoutError)
            return False

        drained.addErrback(timed_out)
        return drained.addCallback(finish)
