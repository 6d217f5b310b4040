"""Separate hosts, for real: every process in its own network namespace (issue 9, section 4).

tests/netns.py builds the network: Redis, the thriftpy2 counting backend, three
``gateway serve`` nodes and two client hosts, each in a namespace of its own, joined by a
bridge in a namespace of its own. Two zones: "east" (Redis, backend, nodes n1 and n2, a
client host) and "west" (node n3, a client host). One-way latency 1 ms within a zone and
20 ms between zones (a round trip n3 <-> Redis takes 40 ms), 1 % packet loss on every
link between the zones. Partitions drop packets silently in the bridge, so only timeouts
tell a node about them. The clients are thriftpy2's, opened from a client host's
namespace (tests/netns.py: ``Host.entered``).

The first tests check the harness itself (latency, loss, partition and clean-up are real);
the scenario tests share one set of processes (module fixture) and heal the network first.
Needs root, iproute2 and iptables; skips elsewhere with the reason.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from counting import CountingBackend, client
from netns import Host, Network, unavailable, wait_until
from thriftpy2.thrift import TApplicationException

from gateway.localredis import RedisServer
from gateway.processes import GatewayProcess, healthz

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(unavailable() is not None, reason=f"netns: {unavailable()}"),
]

WITHIN_ZONE_MS = 1.0
BETWEEN_ZONES_MS = 20.0
WAN_LOSS = 0.01
METHOD_TIMEOUT = 2.0
CONNECT_TIMEOUT = 0.5
REPLY_TIMEOUT = 1.0

_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; root may exceed rmem_max


# -- the harness itself -----------------------------------------------------------------------


def _listener(host: Host) -> socket.socket:
    with host.entered():
        server = socket.socket()
    server.bind((host.ip, 0))
    server.listen(16)
    return server


def _connect_time(src: Host, server: socket.socket, timeout: float = 1.0) -> float:
    """Seconds a TCP connect from ``src`` to ``server`` takes (one round trip)."""
    with src.entered():
        start = time.monotonic()
        conn = socket.create_connection(server.getsockname(), timeout=timeout)
        took = time.monotonic() - start
    conn.close()
    server.accept()[0].close()
    return took


def test_latency_loss_and_partitions_are_applied_between_namespaces() -> None:
    """Two hosts in different zones: a TCP connect takes the configured round trip (2 x
    20 ms), a partition makes it time out (silently dropped, no reset) and healing restores
    it; 20 % loss drops about a fifth of UDP datagrams."""
    with Network() as net:
        a, b = net.add_host("a", zone="east"), net.add_host("b", zone="west")
        server = _listener(b)
        _connect_time(a, server)  # ARP, first contact
        net.zone_delays(within=WITHIN_ZONE_MS, between=BETWEEN_ZONES_MS)
        took = min(_connect_time(a, server) for _ in range(3))
        assert 0.040 <= took < 0.060, f"round trip {took * 1000:.1f} ms, want 40 ms"
        net.cut(a, b)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            _connect_time(a, server, timeout=0.3)
        assert time.monotonic() - start >= 0.3  # dropped silently: no refusal, no reset
        net.heal(a, b)
        assert _connect_time(a, server) < 0.060
        net.lose(a, b, 0.2)
        with b.entered():
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Room for all 2000 datagrams (as root, past rmem_max): on a loaded machine the
        # socket's default buffer overflows before the test drains it, which is not loss.
        sink.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 8 << 20)
        sink.bind((b.ip, 0))
        sink.settimeout(0.3)
        with a.entered():
            source = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(2000):
            source.sendto(b"x", sink.getsockname())
        received = 0
        with pytest.raises(TimeoutError):
            while True:
                sink.recv(16)
                received += 1
        assert 1400 < received < 1800, f"{received} of 2000 datagrams arrived at 20 % loss"
        for sock in (server, sink, source):
            sock.close()


def test_the_network_leaves_no_namespace_and_no_process_behind() -> None:
    """close() stops what runs in the hosts (by PID) and deletes every namespace it made,
    while nothing was ever added to the machine's own network namespace."""
    links_before = subprocess.run(
        ["ip", "-o", "link"], capture_output=True, text=True, check=True
    ).stdout.count("\n")
    net = Network()
    try:
        host = net.add_host("h")
        sleeper = host.start(["sleep", "60"])
        names = net.namespaces()
        assert len(names) == 2
        links_during = subprocess.run(
            ["ip", "-o", "link"], capture_output=True, text=True, check=True
        ).stdout.count("\n")
        assert links_during == links_before
    finally:
        net.close()
    assert sleeper.returncode is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names)


# -- the lab: every process on a host of its own -------------------------------------------------


@dataclass
class Lab:
    net: Network
    redis_host: Host
    backend_host: Host
    east: Host  # clients in zone east
    west: Host  # clients in zone west
    node_hosts: dict[str, Host]
    nodes: dict[str, GatewayProcess]
    backend: CountingBackend
    redis: RedisServer

    def host_of(self, node: GatewayProcess) -> Host:
        return self.node_hosts[node.node_id]

    def mode(self, node: GatewayProcess) -> str | None:
        """The node's /healthz "redis" mode, read from inside its own host."""
        found = self.host_of(node).run(lambda: healthz(node.admin_url, timeout=1.0))
        mode = (found or {}).get("redis")
        return mode if isinstance(mode, str) else None

    def wait_modes(self, mode: str, nodes: list[GatewayProcess], timeout: float) -> float:
        return wait_until(
            lambda: all(self.mode(n) == mode for n in nodes),
            timeout,
            f"nodes {[n.node_id for n in nodes]} in {mode} mode "
            f"(now {[self.mode(n) for n in nodes]})",
        )

    def logs(self, tail: int = 15) -> str:
        """The nodes' last log lines (for assertion messages)."""
        processes = {name: node.process for name, node in self.nodes.items()}
        processes["backend"] = self.backend.process
        return "\n".join(
            f"--- {name}:\n" + "\n".join(process.stderr_lines[-tail:])
            for name, process in processes.items()
        )

    def backend_count(self, method: str, arg: str) -> int:
        return self.backend_host.run(lambda: self.backend.count("Supervisor", method, arg))


class NetnsRedis(RedisServer):
    """A redis-server inside ``host`` (readiness probed from inside it too)."""

    def __init__(self, host: Host) -> None:
        super().__init__(port=6379, host=host.ip, launcher=host.argv([]))
        self.ns_host = host

    def wait_ready(self, timeout: float = 10.0) -> NetnsRedis:
        with self.ns_host.entered():
            super().wait_ready(timeout)
        return self


def _config(path: Path, redis: RedisServer, backend: CountingBackend) -> Path:
    path.write_text(
        f"""
[gateway]
drain_timeout = 2

[redis]
url = "{redis.url}"
# n3 is 40 ms and 1 % loss away from Redis: a lost packet costs a ~200 ms retransmission,
# and a tight reply_timeout would send the node back to calling the backend itself, so these
# spell out the README's advice for lossy links (reply_timeout 1 s, which is also the
# default, with the session and lease sized from it).
reply_timeout = {REPLY_TIMEOUT}
session_ttl = {2.5 * REPLY_TIMEOUT}
lease_ttl = {3 * REPLY_TIMEOUT}

[backends.default]
address = "{backend.address}"
connect_timeout = {CONNECT_TIMEOUT}

[methods."*"]
timeout = {METHOD_TIMEOUT}

[methods.lookup]
idempotent = true
"""
    )
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    net = Network()
    try:
        redis_host = net.add_host("redis", zone="east")
        backend_host = net.add_host("backend", zone="east")
        node_hosts = {
            "n1": net.add_host("n1", zone="east"),
            "n2": net.add_host("n2", zone="east"),
            "n3": net.add_host("n3", zone="west"),
        }
        east, west = net.add_host("east", zone="east"), net.add_host("west", zone="west")
        net.zone_delays(within=WITHIN_ZONE_MS, between=BETWEEN_ZONES_MS)
        wan = [(x, y) for x in net.hosts.values() for y in net.hosts.values() if x.zone < y.zone]
        for x, y in wan:
            net.lose(x, y, WAN_LOSS)
        redis = NetnsRedis(redis_host).start()
        net.on_close(redis.close)
        # No idle timeout: a backend closing an idle connection races with a call sent on it
        # (20 ms away, that call is lost mid-call), which is not what these tests are about.
        backend = CountingBackend(
            multiplexed=False,
            host=backend_host.ip,
            launcher=backend_host.argv([]),
            client_timeout=0,
        )
        net.track(backend.process)
        config = _config(tmp_path_factory.mktemp("netns") / "gateway.toml", redis, backend)
        nodes = {
            name: net.start_gateway(host, config=config, node_id=name)
            for name, host in node_hosts.items()
        }
        lab = Lab(net, redis_host, backend_host, east, west, node_hosts, nodes, backend, redis)
        lab.wait_modes("cluster", list(nodes.values()), timeout=15)
        yield lab
    finally:
        net.close()


@pytest.fixture
def healed(lab: Lab) -> Lab:
    """The lab with no partition and every node in cluster mode."""
    lab.net.heal()
    lab.wait_modes("cluster", list(lab.nodes.values()), timeout=15)
    return lab


# -- clients --------------------------------------------------------------------------------


@dataclass
class Answer:
    node: str
    reply: Any  # the Echo, or the exception the call raised
    seconds: float

    @property
    def clean_error(self) -> bool:
        """A gateway error reply (TApplicationException "gateway: ..."), not a hang-up."""
        return isinstance(self.reply, TApplicationException) and str(self.reply).startswith(
            "gateway:"
        )


def calls(
    lab: Lab,
    plan: list[tuple[Host, GatewayProcess, str, str]],
    delay: float = 0.0,
    stagger: Callable[[int], float] = lambda i: 0.0,
) -> list[Answer]:
    """One call per (client host, node, method, arg), all at once from threads: each opens
    its connection inside its client host first, then all send together (after
    ``stagger(i)`` seconds). Answers in plan order."""
    answers: list[Answer | None] = [None] * len(plan)
    ready = threading.Barrier(len(plan))

    def one(i: int, host: Host, node: GatewayProcess, method: str, arg: str) -> None:
        with host.entered():
            connection = client(node.address, multiplexed=False, timeout_ms=15_000)
            c = connection.__enter__()
        try:
            ready.wait(timeout=15)
            time.sleep(stagger(i))
            start = time.monotonic()
            try:
                reply: Any = getattr(c, method)(arg, {}, delay)
            except Exception as exc:
                reply = exc
            answers[i] = Answer(node.node_id, reply, time.monotonic() - start)
        finally:
            connection.__exit__(None, None, None)

    threads = [threading.Thread(target=one, args=(i, *p)) for i, p in enumerate(plan)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(a is not None for a in answers), "a caller never returned"
    return [a for a in answers if a is not None]


def herd(lab: Lab, method: str, arg: str, per_node: int = 4) -> list[tuple[Host, Any, str, str]]:
    """``per_node`` callers on each node, alternately from the east and west client hosts."""
    plan = []
    for i in range(per_node * len(lab.nodes)):
        node = list(lab.nodes.values())[i % len(lab.nodes)]
        plan.append(((lab.east, lab.west)[i % 2], node, method, arg))
    return plan


def own_answers(answers: list[Answer], method: str, arg: str) -> bool:
    return all(
        not isinstance(a.reply, Exception) and (a.reply.method, a.reply.arg) == (method, arg)
        for a in answers
    )


# -- scenarios -------------------------------------------------------------------------------


def test_cross_zone_herd_with_latency_reaches_the_backend_once(healed: Lab) -> None:
    """12 callers over 3 nodes in two zones (40 ms round trips from n3 to Redis, 1 % loss
    across zones) asking the same echo at once: each gets its own answer, and the backend,
    counting as calls arrive, was called once."""
    lab = healed
    answers = calls(lab, herd(lab, "echo", "herd-a"), delay=1.0)
    print(f"netns: herd answered in {min(a.seconds for a in answers):.2f}-"
          f"{max(a.seconds for a in answers):.2f}s (backend 1 s)")  # fmt: skip
    assert own_answers(answers, "echo", "herd-a"), answers
    assert {a.reply.call for a in answers} == {1}, (answers, lab.logs())
    assert lab.backend_count("echo", "herd-a") == 1


def test_node_cut_from_redis_serves_local_only_and_rejoins_without_restart(healed: Lab) -> None:
    """n3 partitioned from Redis (packets dropped, no reset): it turns local-only within a
    few seconds while n1 and n2 stay in cluster mode, every caller is answered (n3 calls the
    backend for its own callers: 2 backend calls for a herd over 3 nodes), and after the heal
    the same n3 process is back in cluster mode and a herd reaches the backend once."""
    lab = healed
    n1, n2, n3 = lab.nodes.values()
    pid = n3.pid
    lab.net.cut(lab.host_of(n3), lab.redis_host)
    to_local = lab.wait_modes("local", [n3], timeout=8)
    assert lab.mode(n1) == lab.mode(n2) == "cluster"
    answers = calls(lab, herd(lab, "echo", "herd-b"), delay=1.0)
    assert own_answers(answers, "echo", "herd-b"), (answers, lab.logs())
    assert lab.backend_count("echo", "herd-b") == 2, (answers, lab.logs())
    lab.net.heal()
    took = lab.wait_modes("cluster", [n3], timeout=15)
    print(f"netns: n3 local-only {to_local:.2f}s after the cut, cluster {took:.2f}s after the heal")
    assert n3.pid == pid and n3.process.returncode is None
    answers = calls(lab, herd(lab, "echo", "herd-b-healed"), delay=1.0)
    assert own_answers(answers, "echo", "herd-b-healed"), answers
    assert lab.backend_count("echo", "herd-b-healed") == 1, (took, answers, lab.logs())


def test_redis_cut_from_everyone_every_call_answered_then_rejoin(healed: Lab) -> None:
    """Redis partitioned from every other host: all three nodes turn local-only, every call
    is answered correctly (a herd costs at most one backend call per node), and after the
    heal all three are back in cluster mode and a herd reaches the backend once."""
    lab = healed
    nodes = list(lab.nodes.values())
    others = [h for h in lab.net.hosts.values() if h is not lab.redis_host]
    lab.net.cut(lab.redis_host, others)
    to_local = lab.wait_modes("local", nodes, timeout=8)
    answers = calls(lab, herd(lab, "echo", "herd-c"), delay=1.0)
    assert own_answers(answers, "echo", "herd-c"), answers
    assert lab.backend_count("echo", "herd-c") <= 3
    distinct = calls(lab, [(lab.west, n, "echo", f"distinct-c-{n.node_id}") for n in nodes])
    assert all(own_answers([a], "echo", f"distinct-c-{a.node}") for a in distinct), distinct
    lab.net.heal()
    took = lab.wait_modes("cluster", nodes, timeout=15)
    print(
        f"netns: all local-only {to_local:.2f}s after the cut, cluster {took:.2f}s after the heal"
    )
    answers = calls(lab, herd(lab, "echo", "herd-c-healed"), delay=1.0)
    assert own_answers(answers, "echo", "herd-c-healed"), answers
    assert lab.backend_count("echo", "herd-c-healed") == 1, (answers, lab.logs())


def test_backend_cut_from_one_node_its_calls_fail_cleanly_and_are_handed_back(
    healed: Lab,
) -> None:
    """The backend partitioned from n3 only, while n3's pooled connections to it are open
    (they go silent: no reset): every call on n3 ends within the method timeout with a clean
    gateway error, n3 soon knows the backend is unreachable and fails fast, and a call n3
    leads is handed back rather than its failure passed on: the callers on n1 and n2 are
    answered, the backend called once (n3's own caller gets the clean error, or, when a
    lost packet made n3 decide after the others, follows their leader and its answer).
    After the heal n3 answers again."""
    lab = healed
    n1, n2, n3 = lab.nodes.values()
    lab.net.cut(lab.host_of(n3), lab.backend_host)
    cut_at = time.monotonic()

    # n3 gets each call first (it leads); the callers on n1 and n2 come 0.3 s later.
    def plan(method: str, arg: str) -> list[tuple[Host, GatewayProcess, str, str]]:
        return [(lab.west, n3, method, arg)] + [(lab.east, n, method, arg) for n in (n1, n2) * 2]

    lookup = calls(lab, plan("lookup", "cut-d"), delay=0.5, stagger=lambda i: 0.3 if i else 0.0)
    # Right after the cut n3 sends on connections it still believes in: its call may have
    # reached the backend, so only an idempotent method's followers may try again.
    mine, theirs = lookup[0], lookup[1:]
    assert mine.clean_error and mine.seconds < METHOD_TIMEOUT + 0.5, mine
    assert own_answers(theirs, "lookup", "cut-d"), lookup
    assert lab.backend_count("lookup", "cut-d") == 1

    def fails_fast() -> bool:
        (probe,) = calls(lab, [(lab.west, n3, "echo", f"probe-{time.monotonic()}")])
        assert probe.clean_error and probe.seconds < METHOD_TIMEOUT + 0.5, probe
        return "unreachable" in str(probe.reply)

    # The kernel gives up on its silent connections after 3 s (SILENCE_FLOOR; connect_timeout
    # is less), then one reconnect attempt has to time out.
    took = wait_until(fails_fast, 3.0 + CONNECT_TIMEOUT + METHOD_TIMEOUT, "n3 failing fast")
    since = time.monotonic() - cut_at
    print(f"netns: n3 failing fast {since:.2f}s after the cut (first call: {mine.seconds:.2f}s)")
    led = 0
    for round_ in range(3):
        arg = f"cut-d-{round_}"
        answers = calls(lab, plan("echo", arg), delay=0.5, stagger=lambda i: 0.3 if i else 0.0)
        mine, theirs = answers[0], answers[1:]
        if mine.clean_error:  # n3 led: it failed fast and handed the call back
            assert "unreachable" in str(mine.reply), mine
            led += 1
        else:
            # A lost packet on n3's lossy link to Redis (a ~200 ms retransmission) delayed
            # its decide past the others' 0.3 s: it followed their leader, and was answered.
            assert own_answers([mine], "echo", arg), mine
        assert own_answers(theirs, "echo", arg), (took, answers, lab.logs())
        assert lab.backend_count("echo", arg) == 1
    assert led >= 1, "n3 never led a call: the hand-back was not exercised"
    lab.net.heal()
    wait_until(
        lambda: own_answers(calls(lab, [(lab.west, n3, "echo", "healed-d")]), "echo", "healed-d"),
        10,
        "n3 answering again after the heal",
    )
