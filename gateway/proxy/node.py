"""A gateway node: backends, handler, client listener and admin endpoint, started and drained.

The coordinator is handed in (local-only or Redis-backed), so this module never imports the
cluster layer; ``gateway.app`` chooses and wires it, together with the node's flight table
(which the coordinators register their background work with).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from gateway.config import GatewayConfig
from gateway.contracts import Coordinator
from gateway.flights import FlightTable
from gateway.observe import Observations
from gateway.primitives import DeferredPool
from gateway.proxy.admin import admin_site
from gateway.proxy.backend import Backend
from gateway.proxy.connections import ClientLimits
from gateway.proxy.handler import CallHandler
from gateway.proxy.metrics import Metrics
from gateway.proxy.reload import (
    ConfigStatus,
    ConfigStatusCollector,
    ReloadReport,
    longest_timeout,
    merged,
    plan_backends,
    restart_needed,
    retire_when_idle,
)
from gateway.proxy.router import Router
from gateway.proxy.server import GatewayFactory
from gateway.proxy.tls import ReloadableServerTLS, TLSServerFactory
from gateway.proxy.tls_upstream import client_creator
from gateway.proxy.upstream import UpstreamPool
from gateway.reactors import ListeningPort, as_reactor
from gateway.stats import NodeStats
from gateway.thrift import Limits, ProtocolKind, TransportKind

log = logging.getLogger("gateway.node")

_TLS_FILES = ("tls_cert", "tls_key", "tls_client_ca", "tls_min_version")
_ANSWER_GRACE = 0.5  # seconds after the drain deadline to write the abandoned calls' replies


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


def build_backends(
    config: GatewayConfig, reactor: Any, limits: Limits, stats: NodeStats | None = None
) -> dict[str, Backend]:
    """The backends of ``config`` (TLS files are read here: ConfigError if unusable)."""
    backends = {}
    for name, cfg in config.backends.items():
        tls = cfg.tls_options
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
                tls=client_creator(tls, addr.host, f"backends.{name}") if tls else None,
                pipelining=cfg.pipelining,
                idle_timeout=cfg.idle_timeout,
                max_connecting=cfg.max_connecting,
                client_share=cfg.client_share,
                stats=stats,
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
        flights: FlightTable | None = None,
        observations: Observations | None = None,
        config_sha256: str | None = None,
        listen_fd: int | None = None,
    ) -> None:
        """``config_sha256``: of the config file ``config`` was read from (for /healthz);
        ``listen_fd``: a listening socket to serve instead of binding ``config.listen``
        (a worker of a multi-worker node: its supervisor bound it, see gateway.workers)."""
        self.config = config
        self._listen_fd = listen_fd
        self.stats = stats or NodeStats()
        self.observations = observations or Observations()
        self._reactor = as_reactor(reactor)
        self._timer: IReactorTime = reactor
        self._mode = mode
        self.limits = Limits(
            max_frame_size=config.max_frame_size,
            max_depth=config.max_depth,
            max_collection_size=config.max_collection_size,
        )
        self.backends = build_backends(config, reactor, self.limits, self.stats)
        self.metrics = Metrics(
            self.stats, config.node_id, mode, self.observations, now=self._reactor.seconds
        )
        self.config_status = ConfigStatus(config_sha256, self._reactor.seconds())
        self.metrics.registry.register(ConfigStatusCollector(self.config_status, config.node_id))
        # Backends a reload replaced or removed, until their calls in flight are over.
        self._retiring: dict[Backend, Deferred[None]] = {}
        self.flights = flights or FlightTable(reactor, hot_keys=self.observations.hot_keys)
        if self.observations.flights is None:
            self.observations.flights = self.flights  # the "oldest call in flight" gauge
        self.handler = CallHandler(
            Router(config),
            self.backends,
            self.flights,
            coordinator,
            self.stats,
            reactor,
            self.limits,
            self.metrics,
            errors=self.observations.errors,
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
                header_zlib_replies=config.header_zlib_replies,
                body_timeout=config.body_timeout,
                max_partial_bytes=config.max_partial_bytes,
            ),
        )
        # TLS on the client port: its own listener, certificates reloaded live (proxy.tls).
        self.tls = ReloadableServerTLS(config.tls) if config.tls is not None else None
        self.port: ListeningPort | None = None
        self.tls_port: ListeningPort | None = None
        self.admin_port: ListeningPort | None = None

    def health(self) -> dict[str, object]:
        return {
            "listening": self.port is not None,
            "node_id": self.config.node_id,
            "redis": self._mode(),
            "in_flight": self.stats.in_flight,
            "config": self.config_status.health(),
            **({"tls": self._tls_health()} if self.tls is not None else {}),
        }

    def _tls_health(self) -> dict[str, object]:
        assert self.tls is not None
        return {"listening": self.tls_port is not None, **self.tls.health()}

    def start(self) -> None:
        """Listen (raises CannotListenError if a port is taken) and connect to backends."""
        listen = self.config.listen
        if self._listen_fd is not None:
            self.port = self._adopt(self._listen_fd)
        else:
            # A large backlog: a herd of clients connects at once; the default 50 stalls them.
            self.port = self._reactor.listenTCP(
                listen.port, self.factory, backlog=1024, interface=listen.host
            )
        try:
            if self.tls is not None and self.config.tls_listen is not None:
                tls_listen = self.config.tls_listen
                wrapped = TLSServerFactory(self.tls, self.factory, self._reactor)
                self.tls_port = self._reactor.listenTCP(
                    tls_listen.port, wrapped, backlog=1024, interface=tls_listen.host
                )
            if self.config.admin is not None:
                site = admin_site(self.metrics, self.health)
                admin = self.config.admin
                self.admin_port = self._reactor.listenTCP(admin.port, site, interface=admin.host)
        except Exception:
            for port in (self.port, self.tls_port):
                if port is not None:
                    port.stopListening()
            self.port = self.tls_port = None
            raise
        for backend in self.backends.values():
            backend.start()

    def _adopt(self, fd: int) -> ListeningPort:
        # Twisted serves a duplicate of the descriptor and never shuts the socket down
        # (only closes it); ours is closed once adopted. Non-blocking: Twisted accepts in a
        # loop until EAGAIN, which would block forever on a blocking socket.
        with socket.socket(fileno=fd) as sock:
            sock.setblocking(False)
            return self._reactor.adoptStreamPort(sock.fileno(), sock.family, self.factory)

    @property
    def listen_port(self) -> int:
        assert self.port is not None
        port: int = self.port.getHost().port
        return port

    @property
    def tls_listen_port(self) -> int:
        assert self.tls_port is not None
        port: int = self.tls_port.getHost().port
        return port

    @property
    def admin_listen_port(self) -> int:
        assert self.admin_port is not None
        port: int = self.admin_port.getHost().port
        return port

    def reload(self, loaded: GatewayConfig, sha256: str | None = None) -> ReloadReport:
        """Apply ``loaded`` (a complete, validated config) to the running node.

        New calls use it at once; calls underway finish on the routes and backends they
        started with; client connections are untouched. Settings a reload cannot change
        keep their running values (``restart_needed`` in the report). Everything that can
        fail (building backends) happens before the first change, so a failure leaves the
        node as it was. See :mod:`gateway.proxy.reload`.
        """
        running = self.config
        config = merged(running, loaded)
        if self.tls is None or config.tls is None:
            # No TLS listener, or one only a restart removes: the running settings stay.
            config = replace(config, **{name: getattr(running, name) for name in _TLS_FILES})
        # The certificate files are read again even if their paths did not change: that is
        # how a rotated certificate is picked up (SIGHUP). Unusable ones: ConfigError here.
        tls_context = self.tls.prepare(config.tls) if self.tls and config.tls else None
        plan = plan_backends(
            running.backends,
            self.backends,
            config.backends,
            lambda changed: build_backends(
                replace(config, backends=changed), self._reactor, self.limits, self.stats
            ),
        )
        router = Router(config)
        # Applied in one reactor turn, so no call sees half of it. New pools connect first:
        # a call routed to them in the meantime waits for the first connection.
        for pool in plan.fresh_pools:
            pool.start()
        self.handler.reroute(router, plan.backends)
        if self.tls is not None and config.tls is not None and tls_context is not None:
            self.tls.apply(config.tls, tls_context)
        self.backends = plan.backends
        self.config = config
        bound = longest_timeout(running)  # every call the old config started ends by then
        for backend in plan.retired:
            self._retire(backend, bound)
        restart = tuple(restart_needed(running, loaded))
        self.config_status.succeeded(sha256, self._reactor.seconds(), restart)
        return ReloadReport(
            backends=len(config.backends),
            methods=len(config.methods),
            added=tuple(plan.added),
            changed=tuple(plan.changed),
            removed=tuple(plan.removed),
            restart_needed=restart,
        )

    def _retire(self, backend: Backend, bound: float) -> None:
        retired = retire_when_idle(backend, self.flights.settled(), self._timer, bound)
        self._retiring[backend] = retired
        retired.addCallback(lambda _: self._close_retired(backend))

    def _close_retired(self, backend: Backend) -> None:
        """Stop the pools of a retired ``backend`` that no backend in use shares."""
        self._retiring.pop(backend, None)
        in_use = {
            pool for live in (*self.backends.values(), *self._retiring) for pool in live.pools
        }
        closing = [pool for pool in backend.pools if pool not in in_use]
        for pool in closing:
            pool.stop()
        if closing:
            log.info(
                "backend %s: closed %d retired pool(s) (%s)",
                backend.name,
                len(closing),
                ", ".join(pool.address for pool in closing),
            )

    def stop(self, drain_timeout: float) -> Deferred[DrainSummary]:
        """Stop accepting; wait up to ``drain_timeout`` for client calls and flights; close.

        Flights include those whose callers all hung up (their backend call still answers
        other nodes' followers and fills the cache) and background refreshes. What is still
        running at the deadline is abandoned: its callers are answered with "shutting down",
        and a cluster leader publishes "abandoned" so its followers on other nodes take over
        at once instead of waiting out its lease.
        """
        return Deferred.fromCoroutine(self._stop(drain_timeout))

    async def _stop(self, drain_timeout: float) -> DrainSummary:
        for port in (self.port, self.tls_port):
            if port is not None:
                port.stopListening()
        self.port = self.tls_port = None
        flights = self.flights.drain(drain_timeout)
        # Client calls that waited on an abandoned flight are answered right after it; the
        # grace lets those replies (and passthrough calls) be written before we close.
        calls = self.calls.notify_when_empty(timeout=drain_timeout + _ANSWER_GRACE)
        abandoned_flights = await flights
        try:
            await calls
            calls_left = 0
        except defer.TimeoutError:
            calls_left = len(self.calls)
        abandoned = abandoned_flights + calls_left
        if abandoned:
            log.warning(
                "drain timed out after %gs: %d flight(s) abandoned, %d client call(s) unanswered",
                drain_timeout,
                abandoned_flights,
                calls_left,
            )
        for retiring in list(self._retiring.values()):
            retiring.cancel()  # fires it: its pools close now (shared ones below)
        for backend in self.backends.values():
            backend.stop()
        if self.admin_port is not None:
            self.admin_port.stopListening()
            self.admin_port = None
        return DrainSummary(abandoned == 0, abandoned, self.stats)
