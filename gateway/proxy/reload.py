"""Reloading a running node's configuration (SIGHUP) without dropping connections or calls.

What a reload changes (:data:`RELOADABLE`): method policies, routes, the default backend,
``drain_timeout`` and the backends themselves. Everything else lives in something a reload
cannot swap without a restart: the listening sockets, the limits of open client connections,
the wire limits shared by every reader, the Redis side, the local cache, the log setup. A
reload that changes such a setting applies the rest, keeps the running value, and says which
keys need a restart (:func:`restart_needed`): refusing the whole file would hold back an
urgent policy change behind an unrelated edit.

Calls in flight finish on the objects they started with: the handler resolves a call's route
and backend once, on arrival, and a reload only swaps what later calls resolve. A backend
whose settings did not change keeps its object, its pools and their connections. A replaced
or removed one is *retired*: its pools close once the calls that may still use it are over
(:func:`retire_when_idle`), at most the longest method timeout after the reload. Pools of a
changed backend whose address and connection settings did not change are carried over to
its new object, so adding a replica or tuning ``hedge_after`` reconnects nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.config import Address, BackendConfig, ConfigError, GatewayConfig, RedisConfig
from gateway.proxy.backend import Backend
from gateway.proxy.upstream import UpstreamPool

log = logging.getLogger("gateway.reload")

# GatewayConfig fields a reload applies; any other field that differs needs a restart.
RELOADABLE = frozenset(
    {"backends", "default_backend", "routes", "methods", "default_policy", "drain_timeout"}
    | {"tls_cert", "tls_key", "tls_client_ca", "tls_min_version"}  # files re-read too
)

_NO_ADDRESS = Address("", 0)


def restart_needed(running: GatewayConfig, loaded: GatewayConfig) -> list[str]:
    """The config keys that differ between the two and take effect only on a restart."""
    keys: list[str] = []
    for setting in fields(GatewayConfig):
        name = setting.name
        before, after = getattr(running, name), getattr(loaded, name)
        if name in RELOADABLE or before == after:
            continue
        if isinstance(before, RedisConfig) and isinstance(after, RedisConfig):
            keys += [
                f"redis.{key.name}"
                for key in fields(RedisConfig)
                if getattr(before, key.name) != getattr(after, key.name)
            ]
        else:
            keys.append("redis" if name == "redis" else f"gateway.{name}")
    return keys


def merged(running: GatewayConfig, loaded: GatewayConfig) -> GatewayConfig:
    """The config a node runs after a reload: ``loaded``'s reloadable settings, the rest kept."""
    return replace(running, **{name: getattr(loaded, name) for name in RELOADABLE})


def longest_timeout(config: GatewayConfig) -> float:
    """The longest per-call backend timeout of ``config`` (every method, and the default)."""
    return max(
        [config.default_policy.timeout, *(m.policy.timeout for m in config.methods.values())]
    )


def _same_backend(before: BackendConfig, after: BackendConfig) -> bool:
    """Whether the running backend object serves ``after`` as is.

    ``multiplexed`` and ``service`` only change the upstream name, which the router makes.
    """
    return replace(before, multiplexed=False, service="") == replace(
        after, multiplexed=False, service=""
    )


def _same_pools(before: BackendConfig, after: BackendConfig) -> bool:
    """Whether a pool built for ``before`` at some address equals one for ``after`` there."""

    def pool_settings(cfg: BackendConfig) -> BackendConfig:
        # Everything but what the backend object (not its pools) or the router uses.
        return replace(
            cfg, address=_NO_ADDRESS, replicas=(), hedge_after=None, multiplexed=False, service=""
        )

    return pool_settings(before) == pool_settings(after)


@dataclass
class BackendPlan:
    """The backends after a reload, and what it takes to get there from the running ones."""

    backends: dict[str, Backend]  # by name, in the loaded config's order
    fresh_pools: list[UpstreamPool]  # built for this reload, not started yet
    retired: list[Backend]  # replaced or removed: drained, then their unshared pools closed
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def plan_backends(
    running_config: Mapping[str, BackendConfig],
    running: Mapping[str, Backend],
    loaded_config: Mapping[str, BackendConfig],
    build: Callable[[dict[str, BackendConfig]], dict[str, Backend]],
) -> BackendPlan:
    """Keep unchanged backends, ``build`` the new and changed ones, retire the others.

    Nothing is started or stopped here: the caller applies the plan once it is complete.
    """
    kept = {
        name: running[name]
        for name, cfg in loaded_config.items()
        if name in running_config and _same_backend(running_config[name], cfg)
    }
    to_build = {name: cfg for name, cfg in loaded_config.items() if name not in kept}
    built = build(to_build) if to_build else {}
    fresh: list[UpstreamPool] = []
    for name, backend in built.items():
        before = running_config.get(name)
        reusable: dict[str, UpstreamPool] = {}
        if before is not None and _same_pools(before, loaded_config[name]):
            reusable = {pool.address: pool for pool in running[name].pools}
        for i, pool in enumerate(backend.pools):
            carried = reusable.pop(pool.address, None)
            if carried is None:
                fresh.append(pool)
            else:
                # Swapped before anything started the fresh pool: it never connected.
                backend.pools[i] = carried
    return BackendPlan(
        backends={name: kept[name] if name in kept else built[name] for name in loaded_config},
        fresh_pools=fresh,
        retired=[backend for name, backend in running.items() if name not in kept],
        added=[name for name in loaded_config if name not in running_config],
        changed=[name for name in loaded_config if name in running_config and name not in kept],
        removed=[name for name in running_config if name not in loaded_config],
    )


def retire_when_idle(
    backend: Backend, settled: Deferred[None], clock: IReactorTime, bound: float
) -> Deferred[None]:
    """Fires once ``backend``'s calls are over, ``bound`` seconds at the latest; never fails.

    ``settled`` fires when the flights running at the reload have finished: one of them may
    still reach this backend (a cluster flight calls it only after Redis decided it leads).
    Then the calls underway on the backend itself (passthrough and oneway calls, retries).
    Cancelling the returned Deferred (the node stops) fires it at once.
    """
    waiting = settled.addCallback(lambda _: backend.idle())
    waiting.addTimeout(bound, clock)

    def stop_waiting(reason: Failure) -> None:
        if isinstance(reason.value, defer.TimeoutError):
            log.warning(
                "backend %s: calls from before the reload still underway after %gs (the "
                "longest method timeout); closing its old connections",
                backend.name,
                bound,
            )
        elif not isinstance(reason.value, CancelledError):
            log.error("backend %s: retiring failed: %s", backend.name, reason.getTraceback())

    return waiting.addErrback(stop_waiting)


@dataclass(frozen=True)
class ReloadReport:
    """What one successful reload did, for its log line."""

    backends: int
    methods: int
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    restart_needed: tuple[str, ...] = ()

    def line(self, source: str) -> str:
        text = (
            f"gateway: reloaded {source}: {self.backends} backend(s), "
            f"{self.methods} method policies"
        )
        changes = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("added", self.added),
                ("changed", self.changed),
                ("removed", self.removed),
            )
            if names
        ]
        return text + (f"; backends {'; '.join(changes)}" if changes else "")

    def restart_line(self) -> str | None:
        if not self.restart_needed:
            return None
        values = "value" if len(self.restart_needed) == 1 else "values"
        return (
            f"gateway: reload: not applied until a restart: {', '.join(self.restart_needed)} "
            f"(running with the old {values})"
        )


@dataclass
class ConfigStatus:
    """The running config's provenance and the node's reloads: for /healthz and /metrics."""

    sha256: str | None  # of the config file's bytes (None: flags only)
    loaded_at: float  # clock seconds (Unix time on the real reactor)
    restart_needed: tuple[str, ...] = ()  # keys changed in the file, not applied yet
    reloads_ok: int = 0
    reloads_failed: int = 0
    last_reload_ok: bool = True

    def succeeded(self, sha256: str | None, at: float, restart: tuple[str, ...]) -> None:
        self.sha256, self.loaded_at, self.restart_needed = sha256, at, restart
        self.reloads_ok += 1
        self.last_reload_ok = True

    def failed(self) -> None:
        self.reloads_failed += 1
        self.last_reload_ok = False

    def health(self) -> dict[str, object]:
        return {
            "sha256": self.sha256,
            "loaded_at": round(self.loaded_at, 3),
            "reloads": {"ok": self.reloads_ok, "error": self.reloads_failed},
            "last_reload_ok": self.last_reload_ok,
            "restart_needed": list(self.restart_needed),
        }


class ConfigStatusCollector(Collector):
    """``gateway_config_*`` metrics, read from a :class:`ConfigStatus` at scrape time."""

    def __init__(self, status: ConfigStatus, node_id: str) -> None:
        self._status = status
        self._node_id = node_id

    def collect(self) -> Iterator[Metric]:
        status, node = self._status, self._node_id
        reloads = CounterMetricFamily(
            "gateway_config_reloads",
            "Config reloads (SIGHUP) by result: ok, or error (the running config was kept)",
            labels=["node", "result"],
        )
        reloads.add_metric([node, "ok"], float(status.reloads_ok))
        reloads.add_metric([node, "error"], float(status.reloads_failed))
        yield reloads
        last = GaugeMetricFamily(
            "gateway_config_last_reload_successful",
            "0 when the last reload failed (the node runs an older config than its file)",
            labels=["node"],
        )
        last.add_metric([node], 1.0 if status.last_reload_ok else 0.0)
        yield last
        loaded = GaugeMetricFamily(
            "gateway_config_loaded_timestamp_seconds",
            "When the running config was loaded (at start or by the last good reload)",
            labels=["node"],
        )
        loaded.add_metric([node], status.loaded_at)
        yield loaded


class Reloadable(Protocol):
    """What :func:`reload_from` needs of a node (``proxy.node.GatewayNode``)."""

    @property
    def config_status(self) -> ConfigStatus: ...

    def reload(self, loaded: GatewayConfig, sha256: str | None = None) -> ReloadReport: ...


def reload_from(
    node: Reloadable,
    load: Callable[[], tuple[GatewayConfig, str | None]],
    source: str,
) -> ReloadReport | None:
    """Re-read the config with ``load`` and apply it to ``node``: the SIGHUP handler's work.

    The whole file is validated before anything changes. A bad one leaves the node as it
    was and logs one line; a good one logs one line saying what changed (and one more if
    some of its changes need a restart).
    """
    try:
        loaded, sha256 = load()
    except ConfigError as exc:
        node.config_status.failed()
        log.error("gateway: reload failed, keeping the running config: %s", exc)
        return None
    except Exception as exc:
        # Loading only ever raises ConfigError (gateway.config.build_config); anything else
        # is a bug there, but the file on disk is still not what runs: count it, so the
        # reload-failed alert fires, in one line.
        node.config_status.failed()
        log.error(
            "gateway: reload failed, keeping the running config: internal error (%s: %s)",
            type(exc).__name__,
            exc,
        )
        return None
    try:
        report = node.reload(loaded, sha256)
    except ConfigError as exc:  # a certificate or key file that cannot be used (node.reload)
        node.config_status.failed()
        log.error("gateway: reload failed, keeping the running config: %s", exc)
        return None
    except Exception:
        # A bug, not a bad file: the node applied nothing (see GatewayNode.reload).
        node.config_status.failed()
        log.exception("gateway: reload failed, keeping the running config: internal error")
        return None
    log.info("%s", report.line(source))
    restart = report.restart_line()
    if restart is not None:
        log.warning("%s", restart)
    return report
