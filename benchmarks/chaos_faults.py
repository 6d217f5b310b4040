"""The chaos soak's processes and the faults done to them, all on loopback, all by PID.

:class:`Fleet` runs Redis (one server, or with ``sentinel`` a master, a replica and three
sentinels), the thriftpy2 counting backend (multiplexed, logging every arrival) and the
gateway nodes, each on a fixed port so that a restarted process is found where its clients
expect it. :class:`FaultLoop` is a thread that, every few seconds, does one fault and
records when it began and when the fleet was whole again:

* ``kill-node``: kill -9 of a gateway node, restarted (same port and node id) 0.3-1 s later;
* ``stop-node``: SIGSTOP of a node for 0.5-3 s (past its 1 s session or not), then SIGCONT;
* ``restart-redis``: kill -9 of Redis, restarted empty on its port 0.3-1 s later; with
  ``sentinel``, ``failover-sentinel`` instead: kill -9 of the master, the sentinels promote
  the replica, the old master comes back as the new master's replica;
* ``restart-backend``: kill -9 of the backend, restarted on its port 0.2-0.6 s later.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.localredis import RedisServer, SentinelGroup, replica_synced
from gateway.processes import (
    GatewayProcess,
    ManagedProcess,
    gateway_cli,
    start_process,
    wait_for_redis_mode,
)

BACKEND = Path(__file__).resolve().parent.parent / "tests" / "tools" / "counting_backend.py"
BACKEND_LINE = r"counting backend listening on (\S+):(\d+)"
PAGE_DELAY = 0.2


def free_low_port() -> int:
    """A free loopback port below the ephemeral range (32768 and up on Linux).

    Processes are restarted on their port; a port the OS hands out for outgoing connections
    (the soak makes thousands) could be taken by one in between.
    """
    while True:
        port = random.randrange(20000, 32000)
        if port in _HANDED_OUT:
            continue
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        _HANDED_OUT.add(port)
        return port


_HANDED_OUT: set[int] = set()  # ports free_low_port() returned: never twice (none is bound yet)


@dataclass
class Fault:
    kind: str
    target: str
    started: float  # unix time
    ended: float = 0.0  # unix time the fleet was whole again: every node in cluster mode
    recovered: bool = True  # False: some node was not in cluster mode 20 s after the fault


def node_config(path: Path, redis_url: str, backend_port: int) -> Path:
    """Short timeouts, so that faults resolve within seconds."""
    path.write_text(
        f"""
[gateway]
drain_timeout = 2

[redis]
url = "{redis_url}"
lease_ttl = 3.0

[backends.default]
address = "127.0.0.1:{backend_port}"
multiplexed = true
service = "Supervisor"
connections = 8
connect_timeout = 1.0

[methods."*"]
timeout = 5

[methods.lookup]
mode = "cache"
ttl = 2
idempotent = true
"""
    )
    return path


class Fleet:
    def __init__(self, workdir: Path, nodes: int, sentinel: bool) -> None:
        self.workdir = workdir
        self.sentinel = SentinelGroup(ports=free_low_port) if sentinel else None
        self.redis = RedisServer(port=free_low_port()) if not sentinel else None
        self.backend_port = free_low_port()
        self.backend_log = workdir / "arrivals.log"
        self.backend: ManagedProcess | None = None
        self.node_ports = [(free_low_port(), free_low_port()) for _ in range(nodes)]
        self.nodes: list[GatewayProcess | None] = [None] * nodes
        self.config = workdir / "gateway.toml"
        self.node_processes: list[tuple[str, ManagedProcess]] = []  # every one ever started
        self.lock = threading.Lock()  # one change at a time (the fault loop vs. close)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port, _ in self.node_ports]

    @property
    def redis_url(self) -> str:
        if self.sentinel is not None:
            return self.sentinel.url
        assert self.redis is not None
        return self.redis.url

    def start(self) -> None:
        if self.sentinel is not None:
            self.sentinel.start()
        elif self.redis is not None:
            self.redis.start()
        self.start_backend()
        node_config(self.config, self.redis_url, self.backend_port)
        for i in range(len(self.nodes)):
            self.start_node(i)
        self.wait_for_cluster(timeout=30)

    def wait_for_cluster(self, timeout: float) -> bool:
        """Wait until every node's /healthz says "cluster"; False if that takes too long.

        A node that serves before it reached Redis (just started or reconnecting) coalesces
        locally only, so the soak starts, and a fault ends, only once all of them are there.
        """
        nodes = [node for node in self.nodes if node is not None]
        try:
            wait_for_redis_mode(nodes, "cluster", timeout=timeout)
        except TimeoutError:
            return False
        return True

    def start_backend(self) -> None:
        # No idle timeout (thriftpy2's default is 3 s): closing an idle connection races with
        # a call sent on it at that moment, a failure that is none of the faults measured.
        argv = [sys.executable, str(BACKEND), "--multiplexed", "--port", str(self.backend_port),
                "--log", str(self.backend_log), "--page-delay", str(PAGE_DELAY),
                "--client-timeout", "0"]  # fmt: skip
        process = start_process(argv)
        self.backend = process
        process.wait_for_line(BACKEND_LINE, timeout=20)

    def start_node(self, i: int) -> GatewayProcess:
        port, admin = self.node_ports[i]
        argv = gateway_cli(
            "serve", "--listen", f"127.0.0.1:{port}", "--node-id", f"n{i + 1}",
            "--config", str(self.config), "--admin", f"127.0.0.1:{admin}",
            "--log-format", "json",
        )  # fmt: skip
        process = start_process(argv)
        self.node_processes.append((f"n{i + 1}", process))
        self.nodes[i] = None
        node = GatewayProcess.from_process(process, timeout=30)
        self.nodes[i] = node
        return node

    def _entries(self) -> list[tuple[float, int, str, dict[str, Any]]]:
        """Every node process's JSON log lines as (unix time, process number, node, entry),
        oldest first."""
        entries = []
        for number, (name, process) in enumerate(self.node_processes):
            for line in list(process.stderr_lines):
                try:
                    entry = json.loads(line)
                    ts = datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
                except (ValueError, KeyError, TypeError):
                    continue
                entries.append((ts.replace(tzinfo=UTC).timestamp(), number, name, entry))
        return sorted(entries, key=lambda e: e[0])

    def node_log(self, start: float, end: float) -> list[str]:
        """The nodes' log lines from unix time ``start`` to ``end``."""
        return [
            f"{at:.3f} {name} {entry.get('level')} {entry.get('msg')}"
            for at, _, name, entry in self._entries()
            if start <= at <= end
        ]

    def redis_outages(self) -> list[Fault]:
        """Each time a node process said "redis down" until it said "redis up" (or logged
        its last line), as a fault of kind ``node-lost-redis``, whatever caused it."""
        outages: list[Fault] = []
        down: dict[int, Fault] = {}
        for at, number, name, entry in self._entries():
            message = str(entry.get("msg", ""))
            if message.startswith("redis down") and number not in down:
                down[number] = Fault("node-lost-redis", name, at, at)
                outages.append(down[number])
            elif message.startswith("redis up") and number in down:
                down.pop(number).ended = at
            elif number in down:
                down[number].ended = at  # still down as of this line
        return outages

    def kill(self, process: ManagedProcess | None) -> None:
        """kill -9 by PID, and reap it."""
        if process is not None and process.returncode is None:
            os.kill(process.pid, signal.SIGKILL)
            process.proc.wait(timeout=10)

    def close(self) -> None:
        """Stop every process of the fleet (by PID), paused ones included."""
        with self.lock:
            # Every node process ever started, not just self.nodes: a restart that never
            # printed its listening line is in no slot but still running.
            for _name, process in self.node_processes:
                if process.returncode is None:
                    os.kill(process.pid, signal.SIGCONT)
                    self.kill(process)
            self.kill(self.backend)
            if self.sentinel is not None:
                self.sentinel.close()
            if self.redis is not None:
                self.redis.close()


class FaultLoop(threading.Thread):
    def __init__(self, fleet: Fleet, rng: random.Random, gap: tuple[float, float]) -> None:
        super().__init__(name="faults", daemon=True)
        self.fleet = fleet
        self.rng = rng
        self.gap = gap
        self.faults: list[Fault] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.wait(self.rng.uniform(*self.gap)):
                with self.fleet.lock:
                    if not self.stopping.is_set():
                        self.one()
        except BaseException as exc:  # reported by the soak, which then stops
            self.error = exc

    def one(self) -> None:
        fleet, rng = self.fleet, self.rng
        redis_fault = "failover-sentinel" if fleet.sentinel is not None else "restart-redis"
        kind = rng.choice(["kill-node", "stop-node", redis_fault, "restart-backend"])
        if kind == "failover-sentinel" and not self._replica_ready():
            kind = "kill-node"
        i = rng.randrange(len(fleet.nodes))
        target = {
            "kill-node": f"n{i + 1}",
            "stop-node": f"n{i + 1}",
            "restart-redis": "redis",
            "failover-sentinel": "master",
            "restart-backend": "backend",
        }[kind]
        fault = Fault(kind, target, time.time())
        self.faults.append(fault)
        if kind == "kill-node":
            node = fleet.nodes[i]
            fleet.kill(node.process if node is not None else None)
            time.sleep(rng.uniform(0.3, 1.0))
            fleet.start_node(i)
        elif kind == "stop-node":
            node = fleet.nodes[i]
            assert node is not None
            os.kill(node.pid, signal.SIGSTOP)
            time.sleep(rng.uniform(0.5, 3.0))
            os.kill(node.pid, signal.SIGCONT)
        elif kind == "restart-redis":
            assert fleet.redis is not None
            fleet.redis.stop()
            time.sleep(rng.uniform(0.3, 1.0))
            fleet.redis.start()
        elif kind == "failover-sentinel":
            self._failover()
        else:
            fleet.kill(fleet.backend)
            time.sleep(rng.uniform(0.2, 0.6))
            fleet.start_backend()
        fault.recovered = fleet.wait_for_cluster(timeout=20)
        fault.ended = time.time()

    def _replica_ready(self) -> bool:
        """A failover needs a replica in sync that the sentinels know about."""
        group = self.fleet.sentinel
        assert group is not None
        try:
            return all(replica_synced(r) for r in group.replicas) and all(
                s.knows_group(len(group.replicas), len(group.sentinels)) for s in group.sentinels
            )
        except Exception:
            return False

    def _failover(self) -> None:
        group = self.fleet.sentinel
        assert group is not None
        old = group.master
        old.stop()
        new = group.wait_for_new_master(timeout=30)
        # The old master comes back as a replica of the new one (the sentinels would
        # reconfigure it anyway); the roles swap for the next failover.
        group.replicas = [r for r in group.replicas if r is not new] + [old]
        group.master = new
        old.extra_args = ["--replicaof", "127.0.0.1", str(new.port)]
        old.start()
        _until(lambda: replica_synced(old), "the old master in sync as a replica", 30)


def _until(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:  # Redis still coming up: not yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached in {timeout}s")
        time.sleep(0.05)
