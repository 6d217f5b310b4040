"""``gateway serve``: turn parsed arguments into a running node (the wiring, nothing else)."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from gateway.config import ConfigError, GatewayConfig, advertised_address
from gateway.contracts import Coordinator
from gateway.flights import FlightTable
from gateway.logs import setup_logging
from gateway.observe import Observations
from gateway.proxy.local import LocalCoordinator
from gateway.proxy.node import DrainSummary, GatewayNode
from gateway.proxy.reload import reload_from
from gateway.reactors import as_reactor
from gateway.runconfig import load_file_from_args, load_from_args
from gateway.stats import NodeStats
from gateway.workers.role import WorkerRole

log = logging.getLogger("gateway.app")


class ClusterSide(Protocol):
    """What serve needs from a node's coordination side (Redis-backed or local-only)."""

    @property
    def coordinator(self) -> Coordinator: ...

    def mode(self) -> str: ...

    def set_address(self, address: str) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> Deferred[None] | None: ...

    def heartbeat_fields(self) -> dict[str, float | str]: ...


class LocalOnly:
    """No Redis configured: coordination stays on this node."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    @property
    def coordinator(self) -> Coordinator:
        return self._coordinator

    def mode(self) -> str:
        return "disabled"

    def set_address(self, address: str) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def heartbeat_fields(self) -> dict[str, float | str]:
        return {}


def build_cluster(
    config: GatewayConfig,
    reactor: Any,
    stats: NodeStats,
    flights: FlightTable,
    observations: Observations,
    worker: WorkerRole | None = None,
) -> ClusterSide:
    local = LocalCoordinator(reactor, max_entries=config.cache_max_entries, spawner=flights)
    if config.redis is None:
        return LocalOnly(local)
    from gateway.cluster.wiring import RedisCluster

    # A worker's supervisor publishes the node's heartbeat; on the node's private Redis
    # nobody reads a worker's hot keys either.
    private = worker is not None and worker.private_redis is not None
    return RedisCluster(
        config,
        reactor,
        stats,
        fallback=local,
        spawner=flights,
        observations=None if private else observations,
        publish_node=worker is None,
    )


def run_check_config(args: argparse.Namespace) -> int:
    """``gateway check-config FILE``: 0 and a one-line summary, or 2 and serve's error line."""
    try:
        config = load_from_args(args)
    except ConfigError as exc:
        print(f"gateway: config error: {exc}", file=sys.stderr)
        return 2
    redis = "redis configured" if config.redis else "no redis"
    workers = f", {config.workers} workers" if config.workers > 1 else ""
    print(
        f"gateway: config OK: {args.config}: {len(config.backends)} backend(s), "
        f"{len(config.methods)} method policies, {redis}{workers}"
    )
    return 0


def run_serve(args: argparse.Namespace) -> int:
    try:
        config, config_sha256 = load_file_from_args(args)
    except ConfigError as exc:
        print(f"gateway: config error: {exc}", file=sys.stderr)
        return 2
    worker = WorkerRole.from_args(args)
    if worker is None and config.workers > 1:
        from gateway.workers.supervisor import run_supervisor

        return run_supervisor(args, config)
    setup_logging(config.log_format, worker.log_label(config.node_id) if worker else config.node_id)

    from twisted.internet import reactor as global_reactor
    from twisted.internet.error import CannotListenError

    reactor = as_reactor(global_reactor)

    stats = NodeStats()
    observations = Observations()
    # The node's one table of calls in flight; it reports finished flights as hot keys.
    flights = FlightTable(global_reactor, hot_keys=observations.hot_keys)
    cluster = build_cluster(config, reactor, stats, flights, observations, worker)
    node = GatewayNode(
        config,
        reactor,
        cluster.coordinator,
        stats,
        mode=worker.node_mode(cluster.mode) if worker else cluster.mode,
        flights=flights,
        observations=observations,
        config_sha256=config_sha256,
        listen_fd=worker.listen_fd if worker else None,
    )
    try:
        node.start()
    except CannotListenError as exc:
        print(
            f"gateway: cannot listen on {exc.interface}:{exc.port}: {exc.socketError}",
            file=sys.stderr,
        )
        return 1
    cluster.set_address(advertised_address(config, node.listen_port))
    cluster.start()
    backends = ", ".join(
        f"{b.name}={','.join(p.address for p in b.pools)}" for b in node.backends.values()
    )
    log.info("backends %s; redis %s", backends, "configured" if config.redis else "disabled")
    stopping = [False]

    def shutdown(signum: int, _frame: object) -> None:
        if stopping[0]:
            return
        stopping[0] = True
        drain_timeout = node.config.drain_timeout  # a reload may have changed it
        log.info("signal %d: draining (up to %gs)", signum, drain_timeout)

        def finished(summary: DrainSummary) -> Deferred[None] | None:
            print(summary.line(config.node_id), flush=True)
            # The Redis side goes last: abandoned leads publish through it, and it waits for
            # those writes (bounded) before it closes its connections.
            stopped = cluster.stop()

            def exit_reactor(_: object) -> None:
                # A short grace so replies written during the drain leave the socket buffers.
                reactor.callLater(0.05, reactor.stop)

            if stopped is None:
                exit_reactor(None)
                return None
            return stopped.addBoth(exit_reactor)

        reactor.callFromThread(lambda: node.stop(drain_timeout).addCallback(finished))

    def reload(_signum: int, _frame: object) -> None:
        def apply() -> None:
            if stopping[0]:
                log.info("SIGHUP ignored: the node is shutting down")
                return
            # The same file and flags serve started with; see gateway.proxy.reload.
            reload_from(
                node, lambda: load_file_from_args(args), args.config or "the command-line flags"
            )

        reactor.callFromThread(apply)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGHUP, reload)
    if worker is not None:
        worker.serve(global_reactor, node, cluster.heartbeat_fields)

    # Everything alive now (modules, config, the node) lives as long as the process. Frozen,
    # it is left out of the cyclic collector's full collections, which the objects of calls
    # in flight trigger every few thousand calls under load and which otherwise walk it all
    # (about a tenth of the gateway's CPU per proxied call). Collected first, so no startup
    # garbage is frozen with it.
    gc.collect()
    gc.freeze()

    # Printed only now: whoever reads the line may signal us at once, and must find our
    # handlers (not Python's default SIGTERM, which would skip the drain).
    # The one stdout line: tests, the demo and scripts read the real ports from it (a
    # worker's goes to its supervisor: it means the worker serves).
    admin = f" admin {config.admin.host}:{node.admin_listen_port}" if config.admin else ""
    print(
        f"gateway {config.node_id} listening on {config.listen.host}:{node.listen_port}{admin}",
        flush=True,
    )

    reactor.run(installSignalHandlers=False)
    return 0
