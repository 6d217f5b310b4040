"""Every caller its own answer, the backend called once: black-box, with real processes.

Gateway nodes (``gateway serve``), a real redis-server, and on both sides a Thrift stack the
gateway did not write: the thriftpy2 counting backend (replies say which service answered,
echo the arguments and count the calls) and thriftpy2 clients. Each test pins one promise
that an earlier version broke (issue 8).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from counting import (
    CountingBackend,
    call_name,
    client,
    cluster,
    gateway,
    guarantees,
    hang_up_after_sending,
    wait_for,
    write_config,
)
from thrift.Thrift import TType
from thrift_messages import message
from thriftpy2.protocol import TBinaryProtocol
from thriftpy2.transport import TMemoryBuffer

from gateway.localredis import RedisServer, free_port
from gateway.processes import GatewayProcess
from gateway.thrift import ProtocolKind

pytestmark = pytest.mark.integration


@pytest.fixture
def mux_backend() -> Iterator[CountingBackend]:
    backend = CountingBackend(multiplexed=True)
    yield backend
    backend.stop()


# -- 1. one call identity: the service is part of it --------------------------------------


@pytest.mark.parametrize("mode", ["coalesce", "cache"])
def test_same_method_of_two_multiplexed_services_never_crosses_replies(
    tmp_path: Path,
    mux_backend: CountingBackend,
    nodes: list[GatewayProcess],
    redis_server: RedisServer,
    mode: str,
) -> None:
    """20 callers at once, 10 asking Supervisor:echo("x") and 10 Poetry:echo("x") with equal
    arguments, over two nodes: every caller gets its own service's reply, each service is
    called once, and (cache mode) each service's cached reply stays its own."""
    methods = f'[methods.echo]\nmode = "{mode}"\n' + ("ttl = 60\n" if mode == "cache" else "")
    config = write_config(tmp_path, mux_backend, redis=redis_server.url, methods=methods)
    a, b = cluster(nodes, config, "a", "b")

    def call(i: int) -> tuple[str, str]:
        service = ("Supervisor", "Poetry")[i % 2]
        with client((a, b)[i // 2 % 2].address, service=service) as c:
            return service, c.echo("x", {}, 0.5).answered_by

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(call, range(20)))
    assert [got for want, got in answers if want != got] == []
    assert mux_backend.count("Supervisor", "echo", "x") == 1
    assert mux_backend.count("Poetry", "echo", "x") == 1
    if mode == "cache":  # later callers are served from the cache: still their own service's
        for service in ("Poetry", "Supervisor"):
            for node in (a, b):
                with client(node.address, service=service) as c:
                    assert c.echo("x", {}, 0.5).answered_by == service
        assert mux_backend.count("Poetry", "echo", "x") == 1


# -- 2. a flight outlives its callers ------------------------------------------------------


@pytest.mark.parametrize("redis", ["none", "down"])
def test_identical_call_after_the_caller_hung_up_joins_the_running_call(
    tmp_path: Path, nodes: list[GatewayProcess], redis: str
) -> None:
    """Local mode (no Redis, or Redis configured but unreachable): caller A starts a slow
    page("disk full") and hangs up; caller B makes the same call while the backend still
    works on A's: B joins it and the backend is paged once."""
    backend = CountingBackend(multiplexed=False, page_delay=1.0)
    try:
        url = f"redis://127.0.0.1:{free_port()}/0" if redis == "down" else None
        config = write_config(tmp_path, backend, redis=url)
        node = gateway(nodes, config, "solo")
        hang_up_after_sending(node.address, "page", "disk full", multiplexed=False)
        wait_for(lambda: backend.count("Supervisor", "page", "disk full") == 1)
        with client(node.address, multiplexed=False) as c:
            reply = c.page("disk full")
        assert (reply.arg, reply.call) == ("disk full", 1)
        assert backend.count("Supervisor", "page", "disk full") == 1
    finally:
        backend.stop()


# -- 3. fencing: a deposed leader never overwrites newer data -----------------------------


def test_deposed_leader_never_overwrites_a_newer_cache_entry(
    tmp_path: Path, nodes: list[GatewayProcess], redis_server: RedisServer
) -> None:
    """Leader A is paused (SIGSTOP) past its lease; B takes over and caches reply #2; A
    resumes and completes with reply #1: A's caller gets #1, but every node keeps serving
    #2 from the cache."""
    backend = CountingBackend(multiplexed=False)
    try:
        config = write_config(
            tmp_path,
            backend,
            redis=redis_server.url,
            methods='[methods.lookup]\nmode = "cache"\nttl = 60\n',
            redis_extra="lease_ttl = 0.6",
        )
        a, b = cluster(nodes, config, "a", "b")
        replies: dict[str, Any] = {}

        def ask(node: GatewayProcess, name: str) -> None:
            with client(node.address, multiplexed=False) as c:
                replies[name] = c.lookup("k", {}, 1.0)

        first = threading.Thread(target=ask, args=(a, "a"))
        first.start()
        wait_for(lambda: backend.count("Supervisor", "lookup", "k") == 1)
        os.kill(a.pid, signal.SIGSTOP)  # a long GC pause, mid-call
        try:
            ask(b, "b")  # follows A, sees its lease lapse, takes over
        finally:
            os.kill(a.pid, signal.SIGCONT)
        first.join(timeout=10)
        assert (replies["a"].call, replies["b"].call) == (1, 2)
        time.sleep(0.2)  # A's complete() lands right after its own callers' replies
        for node in (a, b):
            with client(node.address, multiplexed=False) as c:
                assert c.lookup("k", {}, 1.0).call == 2, f"node {node.node_id} serves reply #1"
        assert backend.count("Supervisor", "lookup", "k") == 2
    finally:
        backend.stop()


# -- 4. the drain finishes flights --------------------------------------------------------


def test_drain_finishes_a_lead_whose_caller_hung_up(
    tmp_path: Path, nodes: list[GatewayProcess], redis_server: RedisServer
) -> None:
    """SIGTERM on a node leading a call whose own caller hung up: the node finishes the call
    before exiting, so the follower on another node is answered after ~2 s with the same,
    single backend call (not after the lease ran out, not with a second call)."""
    backend = CountingBackend(multiplexed=False, page_delay=2.0)
    try:
        config = write_config(tmp_path, backend, redis=redis_server.url)
        a, b = cluster(nodes, config, "a", "b")
        started = time.monotonic()
        hang_up_after_sending(a.address, "page", "fire", multiplexed=False)
        wait_for(lambda: backend.count("Supervisor", "page", "fire") == 1)
        result: dict[str, Any] = {}

        def follow() -> None:
            with client(b.address, multiplexed=False) as c:
                result["reply"] = c.page("fire")
                result["at"] = time.monotonic() - started

        follower = threading.Thread(target=follow)
        follower.start()
        time.sleep(0.3)
        os.kill(a.pid, signal.SIGTERM)
        follower.join(timeout=15)
        assert result["reply"].call == 1
        assert result["at"] < 3.5, f"follower answered after {result['at']:.1f}s"
        assert backend.count("Supervisor", "page", "fire") == 1
        assert a.process.proc.wait(timeout=10) == 0
        a.process.wait_for_line(r"stopped: drained", timeout=5)
    finally:
        backend.stop()


# -- 8. maps with repeated keys are different calls ----------------------------------------


def echo_call(opts: list[tuple[bytes, bytes]], seqid: int) -> bytes:
    """echo("m", opts, 0.5) to plain Supervisor, opts written as given (repeats included)."""
    fields = [
        (1, TType.STRING, b"m"),
        (2, (TType.MAP, TType.STRING, TType.STRING), opts),
        (3, TType.DOUBLE, 0.5),
    ]
    return message(ProtocolKind.BINARY, "echo", fields, seqid=seqid)


def read_echo_reply(sock: socket.socket) -> Any:
    head = b""
    while len(head) < 4:
        head += sock.recv(4 - len(head))
    (size,) = struct.unpack(">i", head)
    body = b""
    while len(body) < size:
        body += sock.recv(size - len(body))
    proto = TBinaryProtocol(TMemoryBuffer(body))
    proto.read_message_begin()
    result = guarantees.Supervisor.echo_result()
    result.read(proto)
    return result.success


def test_maps_with_repeated_keys_in_another_order_are_different_calls(
    tmp_path: Path, nodes: list[GatewayProcess]
) -> None:
    """echo with opts {k: v1, k: v2} and with {k: v2, k: v1}, at the same time: a dict-decoding
    backend sees k=v2 and k=v1, so they are two calls and each caller gets its own answer."""
    backend = CountingBackend(multiplexed=False)
    try:
        node = gateway(nodes, write_config(tmp_path, backend), "solo")
        orders = [[(b"k", b"v1"), (b"k", b"v2")], [(b"k", b"v2"), (b"k", b"v1")]]
        socks = [socket.create_connection((node.host, node.port), timeout=10) for _ in orders]
        for i, (sock, opts) in enumerate(zip(socks, orders, strict=True)):
            call = echo_call(opts, seqid=i + 1)
            sock.sendall(struct.pack(">i", len(call)) + call)
        replies = [read_echo_reply(sock) for sock in socks]
        for sock in socks:
            sock.close()
        assert [r.opts for r in replies] == [{"k": "v2"}, {"k": "v1"}]
    finally:
        backend.stop()


# -- randomized: many callers, random everything, hang-ups ---------------------------------


def test_randomized_callers_each_get_their_own_answer_and_one_backend_call(
    tmp_path: Path,
    mux_backend: CountingBackend,
    nodes: list[GatewayProcess],
    redis_server: RedisServer,
) -> None:
    """Rounds of concurrent callers over random (node, service, method, arguments, protocol,
    transport, multiplexed or plain), some hanging up right after sending: every answered
    caller gets the reply to its own request, and each distinct call of a round reaches the
    backend exactly once (Redis healthy)."""
    seed = int(os.environ.get("GATEWAY_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    methods = '[methods.echo]\nmode = "coalesce"\n[methods.lookup]\nmode = "cache"\nttl = 60\n'
    config = write_config(tmp_path, mux_backend, redis=redis_server.url, methods=methods)
    fleet = cluster(nodes, config, "n0", "n1")
    for round_ in range(3):
        plans = []
        for _ in range(36):
            service = rng.choice(["Supervisor", "Poetry"])
            plans.append(
                {
                    "node": rng.choice(fleet).address,
                    "service": service,
                    "multiplexed": service == "Poetry" or rng.random() < 0.7,
                    "method": rng.choice(["echo", "lookup"]),
                    "arg": f"r{round_}-{rng.randrange(5)}",
                    "opts": {f"o{rng.randrange(2)}": "x"} if rng.random() < 0.5 else {},
                    "protocol": rng.choice(["binary", "compact"]),
                    "transport": rng.choice(["framed", "buffered"]),
                    "hang_up": rng.random() < 0.15,
                }
            )
        barrier = threading.Barrier(len(plans))

        def run(plan: dict[str, Any], barrier: threading.Barrier = barrier) -> Any:
            timeout_ms = 50 if plan["hang_up"] else 15_000
            with client(
                plan["node"],
                service=plan["service"],
                multiplexed=plan["multiplexed"],
                transport=plan["transport"],
                protocol=plan["protocol"],
                timeout_ms=timeout_ms,
            ) as c:
                barrier.wait()
                try:
                    return getattr(c, plan["method"])(plan["arg"], plan["opts"], 1.0)
                except Exception:
                    if plan["hang_up"]:
                        return None  # hung up before the reply, as planned
                    raise

        with ThreadPoolExecutor(len(plans)) as pool:
            replies = list(pool.map(run, plans))
        for plan, reply in zip(plans, replies, strict=True):
            if reply is None:
                continue
            got = (reply.answered_by, reply.method, reply.arg, reply.opts)
            want = (plan["service"], plan["method"], plan["arg"], plan["opts"])
            assert got == want, f"seed {seed}: crossed reply {got} for {want}"
        time.sleep(0.2)  # calls only hung-up callers made are still finishing
        counts = {**mux_backend.counts("Supervisor")}
        distinct = {call_name(p["service"], p["method"], p["arg"], p["opts"]) for p in plans}
        assert {name: counts.get(name, 0) for name in distinct} == dict.fromkeys(distinct, 1), (
            f"seed {seed}, round {round_}"
        )
