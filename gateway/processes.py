"""Real subprocesses on loopback, owned and stopped by PID: example backends, gateway nodes,
the herd client, and readers of a node's admin port (healthz, metrics).

Used by the demo (gateway.demo), the benchmarks and the tests, so it is product code (the
in-memory doubles only tests use are in gateway.testing). It imports the example client
(clients.sync_client) and the standard library, nothing else of the gateway: the processes it
starts are driven through their command line, Thrift port and admin port.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar

from clients.sync_client import ExampleClient

# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


class ManagedProcess:
    """A child process whose stdout/stderr lines are collected by reader threads.

    Draining both pipes matters: a chatty child (tracebacks on stderr) would otherwise block
    once the pipe buffer fills, and look hung. Stop it with :meth:`stop` (SIGTERM by PID,
    then SIGKILL); it is also a context manager that stops on exit.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._changed = threading.Condition()
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(cwd or REPO_ROOT),
            env=child_env,
            text=True,
            errors="replace",
        )
        self._readers = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.stdout_lines)),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr_lines)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def _drain(self, stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()  # EOF: wake waiters so they notice the exit

    def wait_for_line(
        self, pattern: str, timeout: float = 10.0, stream: str = "stdout"
    ) -> re.Match[str]:
        """First line (already printed or still to come) matching the regex ``pattern``.

        Raises ``RuntimeError`` if the process exits first or ``TimeoutError`` after
        ``timeout`` seconds; both messages include the output so far.
        """
        regex = re.compile(pattern)
        lines = self.stdout_lines if stream == "stdout" else self.stderr_lines
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(lines)
                if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                    raise RuntimeError(
                        f"{self.argv[:4]} exited with {self.proc.returncode} before printing "
                        f"{pattern!r}; {self.describe_output()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no line matching {pattern!r} in {timeout}s; {self.describe_output()}"
                    )
                self._changed.wait(min(remaining, 0.1))

    def describe_output(self, tail: int = 20) -> str:
        out = "\n".join(self.stdout_lines[-tail:])
        err = "\n".join(self.stderr_lines[-tail:])
        return f"stdout:\n{out}\nstderr:\n{err}"

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM by PID, SIGKILL after ``timeout`` seconds; returns the exit code.

        Safe to call twice and on an already-exited process.
        """
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=timeout)
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_process(
    argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None
) -> ManagedProcess:
    """Start ``argv`` (no shell) with stdout/stderr collected; the caller must ``stop()`` it."""
    return ManagedProcess(argv, env=env, cwd=cwd)


def gateway_cli(*args: str) -> list[str]:
    """argv running ``gateway <args>`` with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "gateway.cli", *args]


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Return once ``host:port`` accepts a TCP connection; ``TimeoutError`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{host}:{port} not accepting after {timeout}s: {exc}") from exc
            time.sleep(0.02)


def _started(process: ManagedProcess, wait: Callable[[ManagedProcess], T]) -> T:
    """``wait(process)``; the process is stopped if that fails (or is interrupted)."""
    try:
        return wait(process)
    except BaseException:
        process.stop()
        raise


LISTENING_LINE = r"example-backend (\w+) listening on (\S+):(\d+) \((\S+)\)"


class ExampleBackend:
    """A running ``gateway example-backend`` on loopback with an OS-chosen port.

    Also the base of :class:`GatewayProcess`: a child process at a loopback address, made
    from its listening line (:attr:`LINE`) by :meth:`from_process`.
    """

    LINE = LISTENING_LINE
    STOP_TIMEOUT = 5.0

    def __init__(self, process: ManagedProcess, host: str, port: int) -> None:
        self.process = process
        self.host = host
        self.port = port

    @classmethod
    def from_match(cls, process: ManagedProcess, match: re.Match[str]) -> Self:
        return cls(process, match.group(2), int(match.group(3)))

    @classmethod
    def from_process(cls, process: ManagedProcess, timeout: float = 15.0) -> Self:
        """Wait for the listening line of a spawned ``process`` (it is not stopped on failure:
        ``RuntimeError`` if it exits first, ``TimeoutError`` after ``timeout`` seconds)."""
        return cls.from_match(process, process.wait_for_line(cls.LINE, timeout=timeout))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float | None = None) -> int:
        return self.process.stop(self.STOP_TIMEOUT if timeout is None else timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def example_backend_argv(
    service: str = "supervisor",
    *,
    delay: float = 0.0,
    protocol: str = "binary",
    transport: str = "framed",
    multiplexed: bool = False,
    host: str = "127.0.0.1",
    port: int = 0,
) -> list[str]:
    """argv of ``gateway example-backend`` (port 0: the OS picks one, so there is no race
    with other tests for a "free" port)."""
    argv = gateway_cli(
        "example-backend",
        "--listen", f"{host}:{port}",
        "--service", service,
        "--delay", str(delay),
        "--protocol", protocol,
        "--transport", transport,
    )  # fmt: skip
    if multiplexed:
        argv.append("--multiplexed")
    return argv


def start_example_backend(
    service: str = "supervisor",
    *,
    delay: float = 0.0,
    protocol: str = "binary",
    transport: str = "framed",
    multiplexed: bool = False,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout: float = 15.0,
) -> ExampleBackend:
    """Start an example backend and wait for its listening line; the caller must ``stop()``
    it."""
    argv = example_backend_argv(
        service,
        delay=delay,
        protocol=protocol,
        transport=transport,
        multiplexed=multiplexed,
        host=host,
        port=port,
    )
    return _started(start_process(argv), lambda p: ExampleBackend.from_process(p, timeout))


GATEWAY_LINE = r"gateway (\S+) listening on (\S+):(\d+)(?: admin (\S+):(\d+))?"


class GatewayProcess(ExampleBackend):
    """A running ``gateway serve`` on loopback; ports are the real (OS-chosen) ones."""

    LINE = GATEWAY_LINE
    STOP_TIMEOUT = 15.0  # a node drains its calls in flight first

    def __init__(
        self,
        process: ManagedProcess,
        node_id: str,
        host: str,
        port: int,
        admin_port: int | None = None,
    ) -> None:
        super().__init__(process, host, port)
        self.node_id = node_id
        self.admin_port = admin_port

    @classmethod
    def from_match(cls, process: ManagedProcess, match: re.Match[str]) -> Self:
        admin_port = int(match.group(5)) if match.group(5) else None
        return cls(process, match.group(1), match.group(2), int(match.group(3)), admin_port)

    @property
    def admin_url(self) -> str:
        """``http://host:port`` of the admin endpoint (/metrics, /healthz)."""
        if self.admin_port is None:
            raise ValueError(f"gateway node {self.node_id} was started without --admin")
        return f"http://{self.host}:{self.admin_port}"

    def kill(self) -> None:
        """SIGKILL by PID (a crashed node), then reap it."""
        if self.process.returncode is None:
            os.kill(self.pid, signal.SIGKILL)
        self.process.proc.wait(timeout=10)


def gateway_argv(
    *extra: str,
    backend: str | None = None,
    config: str | Path | None = None,
    node_id: str = "test",
    redis: str | None = None,
    admin: bool = False,
    host: str = "127.0.0.1",
) -> list[str]:
    """argv of ``gateway serve --listen HOST:0``; ``extra`` flags are appended verbatim."""
    argv = gateway_cli("serve", "--listen", f"{host}:0", "--node-id", node_id)
    if backend is not None:
        argv += ["--backend", backend]
    if config is not None:
        argv += ["--config", str(config)]
    if redis is not None:
        argv += ["--redis", redis]
    if admin:
        argv += ["--admin", f"{host}:0"]
    return argv + list(extra)


def start_gateway(
    *extra: str,
    backend: str | None = None,
    config: str | Path | None = None,
    node_id: str = "test",
    redis: str | None = None,
    admin: bool = False,
    host: str = "127.0.0.1",
    timeout: float = 15.0,
    env: dict[str, str] | None = None,
) -> GatewayProcess:
    """Start ``gateway serve`` (see :func:`gateway_argv`) and wait for its listening line;
    ``env``: more environment variables for it.

    The caller must ``stop()`` (or ``kill()``) it.
    """
    argv = gateway_argv(
        *extra, backend=backend, config=config, node_id=node_id, redis=redis, admin=admin,
        host=host,
    )  # fmt: skip
    return _started(start_process(argv, env=env), lambda p: GatewayProcess.from_process(p, timeout))


# -- waiting, threads and child processes (tests and benchmarks) ----------------------------


def wait_for(
    probe: Callable[[], T], accept: Callable[[T], bool], what: str, timeout: float = 20.0
) -> T:
    """Poll ``probe`` until ``accept`` says yes and return that value; AssertionError with
    the last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout}s (last: {value!r})")
        time.sleep(0.05)


def concurrently(n: int, fn: Callable[[int], T]) -> list[T]:
    """``fn(0..n-1)`` on n threads released together; the results in order."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T:
        barrier.wait(timeout=30)
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc/<pid>/stat of every process)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # The command name (field 2) may hold spaces or parentheses; fields restart after ")".
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


# -- admin endpoint readings (best effort: a node that does not answer reads as "no data") --


def _admin_get(url: str, timeout: float) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as exc:  # /healthz answers 503 (with its JSON) when not listening
        error_body: bytes = exc.read()
        return error_body
    except (OSError, ValueError):
        return None


def healthz(admin_url: str, timeout: float = 0.5) -> dict[str, Any] | None:
    """The node's /healthz JSON (``{"listening", "node_id", "redis", "in_flight"}``) or None."""
    body = _admin_get(f"{admin_url}/healthz", timeout)
    if body is None:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


_SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
Sample = tuple[str, dict[str, str], float]


def metric_samples(admin_url: str, timeout: float = 0.5) -> list[Sample]:
    """Every sample of the node's /metrics as (name, labels, value); empty when it does not
    answer."""
    body = _admin_get(f"{admin_url}/metrics", timeout)
    samples: list[Sample] = []
    for name, labels, value in _SAMPLE.findall((body or b"").decode("utf-8", "replace")):
        try:
            samples.append((name, dict(_LABEL.findall(labels)), float(value)))
        except ValueError:
            continue
    return samples


def metric_total(samples: Sequence[Sample], name: str, **labels: str) -> float | None:
    """Sum of the samples called ``name`` carrying (at least) ``labels``; None if there are
    none."""
    values = [
        value
        for sample, have, value in samples
        if sample == name and all(have.get(k) == v for k, v in labels.items())
    ]
    return sum(values) if values else None


def metric(admin_url: str, name: str, **labels: str) -> float | None:
    """``name`` (summed over the samples carrying ``labels``) from the node's /metrics;
    None when the node does not answer or has no such sample."""
    return metric_total(metric_samples(admin_url, timeout=5.0), name, **labels)


def redis_mode(node: GatewayProcess) -> str | None:
    """The node's coordination mode from /healthz (``"cluster"``/``"local"``), or None."""
    mode = (healthz(node.admin_url) or {}).get("redis")
    return mode if isinstance(mode, str) else None


def wait_for_redis_mode(nodes: Sequence[GatewayProcess], mode: str, timeout: float = 10.0) -> None:
    """Return once every node's /healthz says ``"redis": mode``.

    ``RuntimeError`` when a node still waiting exits; ``TimeoutError`` naming the nodes (and
    their last mode) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    waiting = list(nodes)
    while True:
        modes = {node.node_id: redis_mode(node) for node in waiting}
        waiting = [node for node in waiting if modes[node.node_id] != mode]
        if not waiting:
            return
        for node in waiting:
            if node.process.returncode is not None:
                raise RuntimeError(
                    f"gateway node {node.node_id} exited with code {node.process.returncode}"
                )
        if time.monotonic() > deadline:
            last = ", ".join(f"{n.node_id} ({modes[n.node_id]})" for n in waiting)
            raise TimeoutError(f"gateway node(s) {last} not in {mode} mode after {timeout}s")
        time.sleep(0.05)


# -- clients --------------------------------------------------------------------------------


def call_once(target: ExampleBackend, call: Callable[[ExampleClient], T], **options: Any) -> T:
    """``call(client)`` on a fresh :class:`ExampleClient` connection to ``target`` (a backend
    or a gateway node); ``options`` go to the client (protocol, transport, multiplexed)."""
    options.setdefault("timeout", 20.0)
    with ExampleClient(target.host, target.port, **options) as client:
        return call(client)


def backend_count(backend: ExampleBackend, method: str = "alertSupervisor") -> int:
    """Calls of ``method`` the example backend itself has received (counted on arrival)."""
    service = "poetry" if method == "getPoem" else "supervisor"
    with ExampleClient(backend.host, backend.port) as client:
        return client.backend_stats(service).get(method, 0)


def herd_argv(targets: Sequence[str], *args: str) -> list[str]:
    """argv of ``python -m clients.herd --targets T1,T2... <args> --json``."""
    return [sys.executable, "-m", "clients.herd", "--targets", ",".join(targets), *args, "--json"]


def run_herd(targets: Sequence[str], *args: str, timeout: float = 90.0) -> dict[str, Any]:
    """Run the herd (see :func:`herd_argv`) to its end and return its --json summary."""
    done = subprocess.run(
        herd_argv(targets, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO_ROOT,
    )
    assert done.stdout, f"the herd printed nothing (exit {done.returncode}): {done.stderr}"
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary
