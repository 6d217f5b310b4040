"""Config reload (SIGHUP) in memory: router and backend swap, deferred close of retired pools."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest
from thrift.Thrift import TMessageType, TType
from thrift_messages import decode, message
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport

from gateway.config import ConfigError, GatewayConfig, build_config, load_config_file
from gateway.contracts import MethodPolicy
from gateway.errors import BackendTimeout
from gateway.flights import FlightTable
from gateway.proxy.backend import Backend
from gateway.proxy.handler import CallHandler
from gateway.proxy.node import GatewayNode
from gateway.proxy.reload import merged, reload_from, restart_needed
from gateway.proxy.router import Router
from gateway.proxy.upstream import UpstreamPool
from gateway.stats import NodeStats
from gateway.testing import DirectCoordinator, ScriptedBackend
from gateway.thrift import DEFAULT_LIMITS, MessageReader, ProtocolKind, TransportKind, frame

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")

BINARY = ProtocolKind.BINARY
FLAGS: dict[str, str | None] = {"listen": "127.0.0.1:0", "node_id": "n1"}


def config(**sections: Any) -> GatewayConfig:
    """A config from TOML-shaped ``sections`` plus FLAGS (listen, node_id)."""
    return build_config(sections, FLAGS)


def backends(**ports: int | dict[str, Any]) -> dict[str, Any]:
    """``[backends]`` tables: a port (one connection to 127.0.0.1:port) or a whole table."""
    return {
        name: {"address": f"127.0.0.1:{spec}", "connections": 1} if isinstance(spec, int) else spec
        for name, spec in ports.items()
    }


def call(text: bytes, method: str = "alertSupervisor") -> bytes:
    return message(BINARY, method, [(1, TType.STRING, text)])


def collect(d: Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def reply_text(reply: bytes) -> bytes:
    _, mtype, _, body = decode(BINARY, reply)
    assert mtype == TMessageType.REPLY, body
    text: bytes = body[0][2][1]  # field 0: (type, value)
    return text


class Wires:
    """A node's backend connections in memory: each connection attempt the node made on its
    MemoryReactorClock is completed over a StringTransport, which the test answers."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self._reactor = reactor
        self._seen = 0
        self.links: list[tuple[int, StringTransport, Any]] = []  # (port, transport, protocol)

    def connect(self) -> None:
        """Complete every connection attempt made since the last call."""
        for host, port, factory, _timeout, _bind in self._reactor.tcpClients[self._seen :]:
            address = IPv4Address("TCP", host, port)
            protocol = factory.buildProtocol(address)
            transport = StringTransport(peerAddress=address)
            protocol.makeConnection(transport)
            self.links.append((port, transport, protocol))
        self._seen = len(self._reactor.tcpClients)

    def attempts(self, port: int) -> int:
        """Connection attempts made to ``port`` so far."""
        return sum(1 for client in self._reactor.tcpClients if client[1] == port)

    def open(self, port: int) -> int:
        """Connections to ``port`` the node has not closed."""
        return sum(1 for p, t, _ in self.links if p == port and not t.disconnecting)

    def answer(self, port: int) -> int:
        """Answer every call sent to ``port`` so far with ``ack:<its text>``; how many."""
        answered = 0
        for p, transport, protocol in self.links:
            if p != port:
                continue
            data, _ = transport.value(), transport.clear()
            for msg in MessageReader(TransportKind.FRAMED, BINARY, DEFAULT_LIMITS).feed(data):
                name, _, seqid, body = decode(BINARY, msg)
                fields = [(0, TType.STRING, b"ack:" + body[0][2][1])]
                protocol.dataReceived(
                    frame(message(BINARY, name, fields, mtype=TMessageType.REPLY, seqid=seqid))
                )
                answered += 1
        return answered


def started_node(cfg: GatewayConfig) -> tuple[GatewayNode, MemoryReactorClock, Wires]:
    reactor = MemoryReactorClock()
    node = GatewayNode(cfg, reactor, DirectCoordinator(), config_sha256="0" * 64)
    node.start()
    wires = Wires(reactor)
    wires.connect()
    return node, reactor, wires


# -- what a reload applies -------------------------------------------------------------------


def test_restart_needed_names_only_the_keys_a_reload_cannot_apply() -> None:
    """Listen, connection limits and Redis settings are named (Redis per key, never its URL's
    value); method policies, routes, backends and drain_timeout are not."""
    running = config(
        backends=backends(default=9001), redis={"url": "redis://:pw@h:6379/0", "prefix": "a:"}
    )
    loaded = build_config(
        {
            "gateway": {"max_connections": 5, "drain_timeout": 3},
            "backends": backends(default=9002, other=9003),
            "routes": {"Poetry": "other"},
            "methods": {"getPoem": {"mode": "cache", "ttl": 5}},
            "redis": {"url": "redis://:pw@h:6379/0", "prefix": "b:"},
        },
        {**FLAGS, "listen": "127.0.0.1:9999"},
    )
    assert restart_needed(running, loaded) == [
        "gateway.listen",
        "redis.prefix",
        "gateway.max_connections",
    ]
    assert restart_needed(running, running) == []


def test_merged_config_takes_the_reloadable_settings_and_keeps_the_rest() -> None:
    """After a reload the node runs the file's policies and backends with its old listen
    address and limits."""
    running = config(backends=backends(default=9001))
    loaded = build_config(
        {
            "gateway": {"max_pipelined": 2, "drain_timeout": 3},
            "backends": backends(default=9002),
            "methods": {"alertSupervisor": {"mode": "passthrough"}},
        },
        {**FLAGS, "listen": "127.0.0.1:9999"},
    )
    out = merged(running, loaded)
    assert out.listen == running.listen and out.max_pipelined == running.max_pipelined
    assert out.backends == loaded.backends and out.methods == loaded.methods
    assert out.drain_timeout == 3


def test_config_file_digest_is_the_sha256_of_the_bytes_parsed(tmp_path: Path) -> None:
    """load_config_file reports the SHA-256 of the file it parsed (what sha256sum prints)."""
    path = tmp_path / "gw.toml"
    path.write_text('[backends.default]\naddress = "127.0.0.1:9001"\n')
    cfg, digest = load_config_file(str(path), FLAGS)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert cfg.backends["default"].address.port == 9001
    assert load_config_file(None, {**FLAGS, "backend": "127.0.0.1:1"})[1] is None


def test_unreadable_config_file_is_a_one_line_config_error(tmp_path: Path) -> None:
    """A config path that cannot be read (here a directory) is a ConfigError, not a crash:
    a reload with it keeps the running config."""
    with pytest.raises(ConfigError, match=r"^config file .*: Is a directory$"):
        load_config_file(str(tmp_path), FLAGS)


# -- the pieces: flights, backends, handler ----------------------------------------------------


def test_flight_table_settled_waits_only_for_flights_running_at_the_time() -> None:
    """settled() fires once the flights running when it was asked have finished; a flight
    started afterwards does not hold it."""
    flights = FlightTable(Clock())
    first: Deferred[Any] = Deferred()
    flights.spawn("b.m:1", first)
    settled = collect(flights.settled())
    later: Deferred[Any] = Deferred()
    flights.spawn("b.m:2", later)
    assert settled == []
    first.callback(None)
    assert settled == [None]
    later.callback(None)


def test_backend_idle_fires_once_its_calls_are_over() -> None:
    """Backend.idle() waits for every call underway through it (here one that times out
    waiting for a connection); in_flight counts them."""
    reactor = MemoryReactorClock()
    pool = UpstreamPool(
        reactor, "127.0.0.1", 9001, transport=TransportKind.FRAMED, protocol=BINARY,
        limits=DEFAULT_LIMITS, connections=1,
    )  # fmt: skip
    pool.start()  # the attempt never completes: the call waits for it
    backend = Backend("default", [pool], reactor)
    assert collect(backend.idle()) == [None]
    result = collect(backend.call(call(b"x"), MethodPolicy(timeout=2)))
    idle = collect(backend.idle())
    assert backend.in_flight == 1 and idle == []
    reactor.advance(2)
    assert isinstance(result[0].value, BackendTimeout)
    assert idle == [None] and backend.in_flight == 0
    pool.stop()


def test_reroute_sends_new_calls_to_the_new_route_and_backend() -> None:
    """After reroute() a call in flight is answered by its old backend, and new calls follow
    the new policy (passthrough: no joining) to the new backend."""
    cfg = config(backends=backends(default=9001))
    clock = Clock()
    old, new = ScriptedBackend(), ScriptedBackend()
    handler = CallHandler(
        Router(cfg), {"default": old}, FlightTable(clock), DirectCoordinator(), NodeStats(),
        clock, DEFAULT_LIMITS,
    )  # fmt: skip
    underway = collect(handler.handle(call(b"a"), BINARY))
    reloaded = build_config(
        {
            "backends": backends(default=9002),
            "methods": {"alertSupervisor": {"mode": "passthrough", "timeout": 3}},
        },
        FLAGS,
    )
    handler.reroute(Router(reloaded), {"default": new})
    after = [collect(handler.handle(call(b"a"), BINARY)) for _ in range(2)]
    assert len(old.calls) == 1 and len(new.calls) == 2  # no joining the old flight either
    assert all(policy.mode == "passthrough" and policy.timeout == 3 for _, policy, _ in new.calls)
    old.reply(b"ack:old")
    new.reply(b"ack:new")
    new.reply(b"ack:new")
    assert reply_text(underway[0]) == b"ack:old"
    assert [reply_text(out[0]) for out in after] == [b"ack:new", b"ack:new"]


# -- a node reloading --------------------------------------------------------------------------


def test_reload_keeps_unchanged_backends_and_replaces_the_others() -> None:
    """An unchanged backend keeps its object and connections (no new attempt); a changed one
    gets new pools; an added one connects; a removed or replaced one, idle, closes at once."""
    node, _, wires = started_node(config(backends=backends(keep=9001, change=9002, drop=9003)))
    kept = node.backends["keep"]
    changed = backends(change={"address": "127.0.0.1:9002", "connections": 2})["change"]
    report = node.reload(
        config(backends={**backends(keep=9001, add=9004), "change": changed}), "1" * 64
    )
    wires.connect()
    assert node.backends["keep"] is kept and wires.attempts(9001) == 1 and wires.open(9001) == 1
    assert wires.attempts(9002) == 1 + 2 and wires.open(9002) == 2  # old one closed
    assert wires.attempts(9004) == 1 and wires.open(9004) == 1
    assert wires.open(9003) == 0
    assert (report.added, report.changed, report.removed) == (("add",), ("change",), ("drop",))
    assert node.health()["config"] == {
        "sha256": "1" * 64,
        "loaded_at": 0.0,
        "reloads": {"ok": 1, "error": 0},
        "last_reload_ok": True,
        "restart_needed": [],
    }


def test_call_in_flight_finishes_on_the_replaced_backend_before_it_closes() -> None:
    """A call sent before the reload is answered over the old connection, which closes only
    then; a call after the reload goes out on the new backend's connection."""
    node, _, wires = started_node(config(backends=backends(default=9001)))
    before = collect(node.handler.handle(call(b"before"), BINARY))
    node.reload(config(backends=backends(default={"address": "127.0.0.1:9001", "connections": 2})))
    wires.connect()
    after = collect(node.handler.handle(call(b"after"), BINARY))
    assert wires.open(9001) == 3 and before == [] and after == []
    assert wires.answer(9001) == 2  # one call on the old connection, one on a new one
    assert reply_text(before[0]) == b"ack:before" and reply_text(after[0]) == b"ack:after"
    assert wires.open(9001) == 2  # the old connection closed once its call was answered


def test_retired_backend_closes_after_the_longest_timeout_even_if_a_flight_is_stuck(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A flight running at the reload that never ends holds the old pools open only until
    the old config's longest method timeout has passed, which is logged."""
    methods = {"*": {"timeout": 2}, "slow": {"timeout": 4}}
    node, reactor, wires = started_node(config(backends=backends(default=9001), methods=methods))
    stuck: Deferred[Any] = Deferred()
    node.flights.spawn("default.slow:0", stuck)
    node.reload(config(backends=backends(default=9002)))
    reactor.advance(3.9)
    assert wires.open(9001) == 1
    caplog.set_level(logging.INFO, logger="gateway")
    reactor.advance(0.1)
    assert wires.open(9001) == 0
    assert [r.getMessage() for r in caplog.records] == [
        "backend default: calls from before the reload still underway after 4s (the longest "
        "method timeout); closing its old connections",
        "backend default: closed 1 retired pool(s) (127.0.0.1:9001)",
    ]
    stuck.callback(None)


def test_changed_backend_carries_over_pools_of_unchanged_addresses() -> None:
    """Adding a replica (or changing hedge_after) builds a new backend object, but the
    existing address keeps its pool and connection: only the new replica connects."""
    node, _, wires = started_node(config(backends=backends(default=9001)))
    old = node.backends["default"]
    table = {
        "address": "127.0.0.1:9001", "replicas": ["127.0.0.1:9002"], "connections": 1,
        "hedge_after": 0.05,
    }  # fmt: skip
    node.reload(config(backends={"default": table}))
    wires.connect()
    new = node.backends["default"]
    assert new is not old and new.pools[0] is old.pools[0]
    assert (wires.attempts(9001), wires.open(9001), wires.attempts(9002)) == (1, 1, 1)


def test_node_stop_closes_backends_still_retiring() -> None:
    """Stopping the node does not wait out a retired backend's drain: its pools close too."""
    node, reactor, wires = started_node(config(backends=backends(default=9001)))
    stuck: Deferred[Any] = Deferred()
    stuck.addErrback(lambda _: None)  # abandoned by the drain below: cancelled
    node.flights.spawn("default.m:0", stuck)
    node.reload(config(backends=backends(default=9002)))
    wires.connect()
    assert wires.open(9001) == 1
    stopped = collect(node.stop(0.1))
    reactor.advance(1)  # the drain abandons the stuck flight at 0.1 s, then the node stops
    assert stopped and wires.open(9001) == 0 and wires.open(9002) == 0


# -- the SIGHUP procedure -------------------------------------------------------------------


def test_bad_file_keeps_the_running_config_logs_one_line_and_counts_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reload whose config does not validate changes nothing, logs exactly one line with
    the config error, and is counted as result="error"."""
    node, _, wires = started_node(config(backends=backends(default=9001)))
    running, router_backends = node.config, node.backends

    def bad() -> tuple[GatewayConfig, str | None]:
        raise ConfigError("methods.getPoem: mode = 'cache' needs ttl > 0")

    caplog.set_level(logging.INFO, logger="gateway")
    assert reload_from(node, bad, "gw.toml") is None
    assert [r.getMessage() for r in caplog.records] == [
        "gateway: reload failed, keeping the running config: "
        "methods.getPoem: mode = 'cache' needs ttl > 0"
    ]
    assert node.config is running and node.backends is router_backends
    assert wires.attempts(9001) == 1 and wires.open(9001) == 1
    health = node.health()["config"]
    assert isinstance(health, dict) and health["last_reload_ok"] is False
    assert health["sha256"] == "0" * 64
    metrics = node.metrics.render().decode()
    assert 'gateway_config_reloads_total{node="n1",result="error"} 1.0' in metrics
    assert 'gateway_config_last_reload_successful{node="n1"} 0.0' in metrics


def test_a_loader_crash_is_still_a_failed_reload(caplog: pytest.LogCaptureFixture) -> None:
    """Should loading ever raise something other than ConfigError, the reload still counts
    as failed (metric, /healthz) and logs one line: the alert must not depend on the bug."""
    node, _, _ = started_node(config(backends=backends(default=9001)))
    running = node.config

    def crashing() -> tuple[GatewayConfig, str | None]:
        raise TypeError("unhashable type: 'list'")

    caplog.set_level(logging.INFO, logger="gateway")
    assert reload_from(node, crashing, "gw.toml") is None
    assert [r.getMessage() for r in caplog.records] == [
        "gateway: reload failed, keeping the running config: "
        "internal error (TypeError: unhashable type: 'list')"
    ]
    assert node.config is running
    metrics = node.metrics.render().decode()
    assert 'gateway_config_reloads_total{node="n1",result="error"} 1.0' in metrics
    assert 'gateway_config_last_reload_successful{node="n1"} 0.0' in metrics


def test_good_file_logs_what_changed_and_what_needs_a_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A good reload logs one line (backends, method policies, what changed), one more naming
    the settings that need a restart, and is counted as result="ok"."""
    node, _, _ = started_node(config(backends=backends(default=9001)))
    loaded = build_config(
        {
            "gateway": {"max_pipelined": 2},
            "backends": backends(default=9001, poetry=9002),
            "methods": {"getPoem": {"backend": "poetry"}},
        },
        FLAGS,
    )
    caplog.set_level(logging.INFO, logger="gateway")
    reload_from(node, lambda: (loaded, "2" * 64), "gw.toml")
    assert [r.getMessage() for r in caplog.records] == [
        "gateway: reloaded gw.toml: 2 backend(s), 1 method policies; backends added poetry",
        "gateway: reload: not applied until a restart: gateway.max_pipelined "
        "(running with the old value)",
    ]
    assert node.config.max_pipelined == 128 and node.config.methods == loaded.methods
    metrics = node.metrics.render().decode()
    assert 'gateway_config_reloads_total{node="n1",result="ok"} 1.0' in metrics
    health = node.health()["config"]
    assert isinstance(health, dict) and health["restart_needed"] == ["gateway.max_pipelined"]
