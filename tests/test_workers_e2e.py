"""Multi-worker nodes end to end: a real supervisor, its worker processes, redis-server,
backends and Thrift clients on loopback; every process is stopped by PID.

Backend calls are counted by the example backend itself (on arrival), never by the gateway.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.localredis import RedisServer
from gateway.processes import (
    ExampleBackend,
    GatewayProcess,
    backend_count,
    call_once,
    child_pids,
    concurrently,
    gateway_cli,
    healthz,
    metric,
    run_herd,
    start_example_backend,
    start_gateway,
    start_process,
    wait_for,
)

pytestmark = pytest.mark.integration

T = TypeVar("T")
HOST = "127.0.0.1"
STARTUP = 60.0  # a loaded 2-core box starts two Python workers in ~4 s; leave room


def start_workers(backend: ExampleBackend, node_id: str, *extra: str, **kw: Any) -> GatewayProcess:
    return start_gateway(
        "--workers", "2", *extra, backend=backend.address, node_id=node_id, admin=True,
        timeout=STARTUP, **kw,
    )  # fmt: skip


def health(node: GatewayProcess) -> dict[str, Any]:
    body = healthz(node.admin_url, timeout=5)
    assert body is not None, f"no /healthz from {node.node_id}"
    return body


def worker_pids(node: GatewayProcess) -> list[int]:
    return [w["pid"] for w in health(node)["workers"]]


def private_dir(pids: list[int]) -> Path:
    """The supervisor's private directory, from a worker's --worker-admin flag."""
    for pid in pids:
        argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        if "--worker-admin" in argv:
            return Path(argv[argv.index("--worker-admin") + 1]).parent
    raise AssertionError(f"no worker among {pids}")


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def herd_once(node: GatewayProcess, backend: ExampleBackend, clients: int = 60) -> int:
    """A herd of identical calls (clients.herd, one key); the backend calls it made."""
    before = backend_count(backend)
    summary = run_herd(
        [node.address], "--clients", str(clients), "--keys", "1", "--rounds", "1",
        "--protocols", "binary,compact", "--timeout", "20", timeout=60,
    )  # fmt: skip
    assert (summary["ok"], summary["wrong_replies"], summary["errors"]) == (clients, 0, 0), summary
    return backend_count(backend) - before


def counter(node: GatewayProcess, name: str) -> float:
    value = metric(node.admin_url, name)
    assert value is not None, f"{name} not in /metrics of {node.node_id}"
    return value


@pytest.fixture(scope="module")
def backend() -> Iterator[ExampleBackend]:
    """A supervisor backend answering after 1 s, so a herd arrives while the first call runs."""
    with start_example_backend(delay=1.0) as server:
        yield server


# -- a node without [redis]: its workers share a private redis-server ----------------------


@pytest.fixture(scope="module")
def private_node(backend: ExampleBackend) -> Iterator[GatewayProcess]:
    with start_workers(backend, "wk-private") as node:
        yield node


def test_herd_to_two_workers_without_redis_reaches_backend_once(
    private_node: GatewayProcess, backend: ExampleBackend
) -> None:
    """60 identical concurrent calls to a 2-worker node without [redis] make one backend
    call: callers on the other worker follow the leader through the private Redis."""
    remote_before = counter(private_node, "gateway_coalesced_remote_total")

    assert herd_once(private_node, backend) == 1

    assert counter(private_node, "gateway_coalesced_remote_total") > remote_before


def test_metrics_and_healthz_are_the_nodes(private_node: GatewayProcess) -> None:
    """/healthz lists both workers serving (private Redis) and /metrics counts every call
    once, whichever worker took it, in the counters and the latency histogram."""
    calls_before = counter(private_node, "gateway_calls_total")
    latency_before = counter(private_node, "gateway_call_latency_seconds_count")

    replies = concurrently(20, lambda i: call_once(private_node, lambda c: c.alert(f"agg-{i}")))

    assert replies == [f"ack:agg-{i}" for i in range(20)]
    assert counter(private_node, "gateway_calls_total") - calls_before == 20
    assert counter(private_node, "gateway_call_latency_seconds_count") - latency_before == 20
    assert counter(private_node, "gateway_workers_up") == 2
    body = health(private_node)
    assert (body["listening"], body["redis"], body["coordination"]) == (
        True,
        "private",
        "private-redis",
    )
    assert [(w["up"], w["listening"], w["redis"]) for w in body["workers"]] == [
        (True, True, "private")
    ] * 2
    assert all(w["calls"] > 0 for w in body["workers"]), body  # both took some of the calls


def test_sighup_is_forwarded_and_workers_survive_it(private_node: GatewayProcess) -> None:
    """SIGHUP to the node reaches every worker (each logs its config reload), and none dies
    or is replaced."""
    pids = worker_pids(private_node)
    lines = private_node.process.stderr_lines
    seen = len(lines)

    os.kill(private_node.pid, signal.SIGHUP)

    reacted = re.compile(r"\[wk-private/w(\d)\] .*reloaded")
    wait_for(
        lambda: {m[1] for line in lines[seen:] if (m := reacted.search(line))},
        lambda workers: workers == {"0", "1"},
        "both workers reacted to the SIGHUP",
    )
    assert worker_pids(private_node) == pids
    assert call_once(private_node, lambda c: c.alert("after-hup")) == "ack:after-hup"


def test_sighup_reloads_every_worker(backend: ExampleBackend, tmp_path: Path) -> None:
    """A config rewritten from passthrough to cache and SIGHUP to the 2-worker node: both
    workers reload it, so identical calls landing on either are served from the one shared
    cache (one backend call), and /healthz shows the new file's hash for the node."""
    path = tmp_path / "gw.toml"
    path.write_text('[methods.alertSupervisor]\nmode = "passthrough"\n')
    node = start_workers(backend, "wk-reload", "--config", str(path))
    try:
        pids = worker_pids(node)
        lines = node.process.stderr_lines
        reloaded = '[methods.alertSupervisor]\nmode = "cache"\nttl = 60\n'
        path.write_text(reloaded)

        os.kill(node.pid, signal.SIGHUP)
        done = re.compile(r"\[wk-reload/w(\d)\] .*gateway: reloaded")
        wait_for(
            lambda: {m[1] for line in lines if (m := done.search(line))},
            lambda workers: workers == {"0", "1"},
            "both workers reloaded",
        )
        before = backend_count(backend)
        replies = [call_once(node, lambda c: c.alert("cached-everywhere")) for _ in range(10)]
        body = health(node)
    finally:
        node.stop()
    assert replies == ["ack:cached-everywhere"] * 10
    assert backend_count(backend) - before == 1
    assert all(w["calls"] > 0 for w in body["workers"]), body  # both workers served some
    assert [w["pid"] for w in body["workers"]] == pids
    assert body["config"]["sha256"] == hashlib.sha256(reloaded.encode()).hexdigest()


def test_killed_worker_is_restarted_and_the_node_keeps_serving(
    private_node: GatewayProcess,
) -> None:
    """A worker killed with SIGKILL is logged and restarted in its slot; meanwhile (once it
    is gone) and after, new calls are answered, and the node's call counter never goes
    back."""
    victim = worker_pids(private_node)[0]
    calls_before = counter(private_node, "gateway_calls_total")

    os.kill(victim, signal.SIGKILL)
    # Once it is gone, so is its listening socket (connections queued on it at that instant
    # are reset, as a dying process's are): new ones all go to the other worker.
    wait_for(lambda: alive(victim), lambda up: not up, "the killed worker gone")
    during = [call_once(private_node, lambda c: c.alert("meanwhile")) for _ in range(3)]
    body = wait_for(
        lambda: health(private_node),
        lambda b: b["listening"] and b["workers"][0]["pid"] not in (None, victim),
        "worker 0 replaced and serving",
    )

    assert during == ["ack:meanwhile"] * 3
    assert body["workers"][0]["restarts"] == 1
    assert call_once(private_node, lambda c: c.alert("after")) == "ack:after"
    assert counter(private_node, "gateway_calls_total") >= calls_before + 4
    assert any(
        re.search(rf"worker 0 \(pid {victim}\) killed by signal 9 .* restarting in", line)
        for line in private_node.process.stderr_lines
    )


# -- a node with [redis]: every worker is a cluster member ----------------------------------


@pytest.fixture(scope="module")
def redis_node(backend: ExampleBackend) -> Iterator[tuple[RedisServer, GatewayProcess]]:
    server = RedisServer().start()
    try:
        with start_workers(backend, "wk-redis", redis=server.url) as node:
            wait_for(lambda: health(node)["redis"], lambda m: m == "cluster", "cluster mode")
            yield server, node
    finally:
        server.close()


def gateway_status(server: RedisServer) -> dict[str, Any]:
    status = start_process(gateway_cli("status", "--redis", server.url, "--json"))
    try:
        line = status.wait_for_line(r"^\{", timeout=30).string
    finally:
        status.stop()
    report: dict[str, Any] = json.loads(line)
    return report


def test_herd_to_two_workers_with_redis_reaches_backend_once(
    redis_node: tuple[RedisServer, GatewayProcess], backend: ExampleBackend
) -> None:
    """60 identical concurrent calls to a 2-worker node with [redis] make one backend call:
    the workers lead and follow each other as cluster nodes do."""
    _, node = redis_node
    remote_before = counter(node, "gateway_coalesced_remote_total")

    assert herd_once(node, backend) == 1

    assert counter(node, "gateway_coalesced_remote_total") > remote_before


def test_status_shows_one_node_with_the_workers_summed(
    redis_node: tuple[RedisServer, GatewayProcess],
) -> None:
    """`gateway status` lists the 2-worker node once, alive, with the calls and backend
    calls of both workers summed (as its /metrics counts them)."""
    server, node = redis_node
    replies = concurrently(6, lambda i: call_once(node, lambda c: c.alert(f"status-{i}")))
    assert replies == [f"ack:status-{i}" for i in range(6)]
    calls = counter(node, "gateway_calls_total")
    backend_calls = counter(node, "gateway_backend_calls_total")

    report = wait_for(
        lambda: gateway_status(server),
        lambda r: bool(r["nodes"]) and r["nodes"][0].get("calls") == calls,
        f"status calls {calls}",
    )

    assert [(n["node_id"], n["state"]) for n in report["nodes"]] == [("wk-redis", "alive")]
    assert report["nodes"][0]["backend_calls"] == backend_calls


# -- nodes of their own ----------------------------------------------------------------------


def test_sigterm_drains_every_worker() -> None:
    """SIGTERM to a 2-worker node answers the calls in flight on both workers, then the node
    exits 0 with one summary line summed over its workers."""
    slow = start_example_backend(delay=2.0)
    node = start_workers(slow, "wk-drain")
    try:
        results: list[list[str]] = []
        callers = threading.Thread(
            target=lambda: results.append(
                concurrently(8, lambda i: call_once(node, lambda c: c.alert(f"drain-{i}")))
            )
        )
        callers.start()
        wait_for(lambda: health(node)["in_flight"], lambda n: n == 8, "8 calls in flight")
        assert all(w["in_flight"] > 0 for w in health(node)["workers"])

        code = node.stop(timeout=20)
        callers.join(timeout=20)
    finally:
        node.stop()
        slow.stop()
    assert code == 0
    assert results == [[f"ack:drain-{i}" for i in range(8)]]
    summaries = [line for line in node.process.stdout_lines if "stopped:" in line]
    assert len(summaries) == 1
    assert summaries[0].startswith("gateway wk-drain stopped: drained; calls=8 backend_calls=8 ")


def test_killing_the_supervisor_takes_its_workers_and_private_redis_down(
    backend: ExampleBackend,
) -> None:
    """A supervisor killed with SIGKILL leaves nothing behind: the workers see their stdin
    pipe close, drain and remove its directory; the private redis-server dies with it."""
    node = start_workers(backend, "wk-orphans")
    try:
        started = child_pids(node.pid)
        assert len(started) == 3, started  # two workers and the private redis-server
        workdir = private_dir(started)
        node.kill()
        wait_for(lambda: [p for p in started if alive(p)], lambda left: not left,
                 "the supervisor's children gone", timeout=20)  # fmt: skip
        assert not workdir.exists()  # its sockets and the private Redis's directory
    finally:
        node.stop()
        for pid in child_pids(node.pid):
            os.kill(pid, signal.SIGKILL)


def test_without_a_redis_server_the_workers_coalesce_on_their_own(
    backend: ExampleBackend,
) -> None:
    """With no redis-server to run, the node logs one line and serves, each worker
    coalescing on its own: a herd reaches the backend at most once per worker."""
    node = start_workers(backend, "wk-alone", env={"GATEWAY_REDIS_SERVER": ""})
    try:
        calls = herd_once(node, backend, clients=40)
        body = health(node)
    finally:
        node.stop()
    assert 1 <= calls <= 2
    assert body["coordination"] == "per-worker" and body["listening"]
    warnings = [line for line in node.process.stderr_lines if "no redis-server found" in line]
    assert len(warnings) == 1


def test_port_taken_is_one_line_and_exit_1() -> None:
    """A multi-worker node whose port is taken prints one line and exits 1, starting no
    worker."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = start_process(gateway_cli("serve", "--listen", f"{HOST}:{port}", "--backend",
                                         f"{HOST}:1", "--workers", "2"))  # fmt: skip
        code = proc.proc.wait(timeout=30)
        proc.stop()
    assert code == 1
    assert len(proc.stderr_lines) == 1 and "cannot listen" in proc.stderr_lines[0]


def test_bad_workers_flag_is_one_line_and_exit_2() -> None:
    """`serve --workers 0` prints the config error line and exits 2."""
    proc = start_process(gateway_cli("serve", "--listen", f"{HOST}:0", "--backend", f"{HOST}:1",
                                     "--workers", "0"))  # fmt: skip
    code = proc.proc.wait(timeout=30)
    proc.stop()
    assert code == 2
    assert proc.stderr_lines == [
        'gateway: config error: gateway.workers: expected a number 1..1024 or "auto", got 0'
    ]
