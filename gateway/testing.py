"""Helpers for tests, the demo and benchmarks.

Sections: "In-memory doubles" (no network: unit tests of the proxy) and "Processes" (real
subprocesses on loopback, owned and stopped by PID).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from twisted.internet.defer import Deferred, succeed

from gateway.contracts import BackendCall, MethodPolicy, Outcome, Source
from gateway.thrift import MessageHeader, ProtocolKind

# ---------------------------------------------------------------------------------------------
# In-memory doubles
# ---------------------------------------------------------------------------------------------


class ScriptedBackend:
    """A backend double (``proxy.handler.BackendLike``): records calls, the test answers them.

    ``calls`` holds (message, policy, oneway) per call; ``pending`` the Deferreds of calls not
    yet answered, in arrival order. Cancelling one records it in ``cancelled``.
    """

    def __init__(self, protocol: ProtocolKind = ProtocolKind.BINARY) -> None:
        self._protocol = protocol
        self.calls: list[tuple[bytes, MethodPolicy, bool]] = []
        self.pending: list[Deferred[bytes]] = []
        self.cancelled = 0

    @property
    def protocol(self) -> ProtocolKind:
        return self._protocol

    def call(
        self,
        message: bytes,
        policy: MethodPolicy,
        oneway: bool = False,
        header: MessageHeader | None = None,
    ) -> Deferred[bytes]:
        self.calls.append((message, policy, oneway))
        if oneway:
            return succeed(b"")

        def cancelled(_: Deferred[bytes]) -> None:
            self.cancelled += 1

        d: Deferred[bytes] = Deferred(cancelled)
        self.pending.append(d)
        return d

    def answer(self, reply: bytes) -> None:
        """Fire the oldest pending call with ``reply`` (a whole reply message)."""
        self.pending.pop(0).callback(reply)

    def fail(self, exc: BaseException) -> None:
        """Fail the oldest pending call with ``exc``."""
        self.pending.pop(0).errback(exc)


class DirectCoordinator:
    """A ``contracts.Coordinator`` that always calls the backend and records the keys it saw."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def execute(
        self, key: str, policy: MethodPolicy, call_backend: BackendCall
    ) -> Deferred[Outcome]:
        self.keys.append(key)
        return call_backend().addCallback(lambda reply: Outcome(reply, Source.BACKEND))


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent


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

    def __enter__(self) -> ManagedProcess:
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


def stop_process(
    process: ManagedProcess | subprocess.Popen[str] | subprocess.Popen[bytes], timeout: float = 5.0
) -> int:
    """Stop a :class:`ManagedProcess` or a plain ``Popen`` by PID: SIGTERM, then SIGKILL."""
    if isinstance(process, ManagedProcess):
        return process.stop(timeout)
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)
    return process.returncode


LISTENING_LINE = r"example-backend (\w+) listening on (\S+):(\d+) \((\S+)\)"


class ExampleBackend:
    """A running ``gateway example-backend`` on loopback with an OS-chosen port.

    Also the base of :class:`GatewayProcess`: a child process at a loopback address.
    """

    def __init__(self, process: ManagedProcess, host: str, port: int) -> None:
        self.process = process
        self.host = host
        self.port = port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> int:
        return self.process.stop(timeout)

    def __enter__(self) -> ExampleBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


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
    """Start an example backend and wait for its listening line (port 0: the OS picks one,
    so there is no race with other tests for a "free" port). The caller must ``stop()`` it."""
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
    process = start_process(argv)
    try:
        match = process.wait_for_line(LISTENING_LINE, timeout=timeout)
    except BaseException:
        process.stop()
        raise
    return ExampleBackend(process, host, int(match.group(3)))


GATEWAY_LINE = r"gateway (\S+) listening on (\S+):(\d+)(?: admin (\S+):(\d+))?"


class GatewayProcess(ExampleBackend):
    """A running ``gateway serve`` on loopback; ports are the real (OS-chosen) ones."""

    def __init__(self, process: ManagedProcess, node_id: str, host: str, port: int) -> None:
        super().__init__(process, host, port)
        self.node_id = node_id
        self.admin_port: int | None = None

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def kill(self) -> None:
        """SIGKILL by PID (a crashed node), then reap it."""
        if self.process.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.process.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int:
        return self.process.stop(timeout)

    def __enter__(self) -> GatewayProcess:
        return self


def start_gateway(
    *extra: str,
    backend: str | None = None,
    config: str | Path | None = None,
    node_id: str = "test",
    redis: str | None = None,
    admin: bool = False,
    host: str = "127.0.0.1",
    timeout: float = 15.0,
) -> GatewayProcess:
    """Start ``gateway serve --listen HOST:0`` and wait for its listening line.

    ``extra`` flags are appended verbatim. The caller must ``stop()`` (or ``kill()``) it.
    """
    argv = gateway_cli("serve", "--listen", f"{host}:0", "--node-id", node_id)
    if backend is not None:
        argv += ["--backend", backend]
    if config is not None:
        argv += ["--config", str(config)]
    if redis is not None:
        argv += ["--redis", redis]
    if admin:
        argv += ["--admin", f"{host}:0"]
    argv += list(extra)
    process = start_process(argv)
    try:
        match = process.wait_for_line(GATEWAY_LINE, timeout=timeout)
    except BaseException:
        process.stop()
        raise
    gateway = GatewayProcess(process, match.group(1), match.group(2), int(match.group(3)))
    if match.group(5):
        gateway.admin_port = int(match.group(5))
    return gateway
