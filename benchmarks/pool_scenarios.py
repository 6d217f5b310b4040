"""The three isolation scenarios of issue 21, against any framed binary Supervisor server.

Each scenario runs real blocking clients in threads, one connection per client (as callers
of a plain Thrift server have), against a target: the backend itself ("direct") or a gateway
in front of it. What they return are latencies; the tests in tests/test_pool_isolation.py
put bounds on them, and benchmarks/pool.py reports them.

The backends answer ``alertSupervisor(m)`` after a fast delay, or a slow one when ``m``
starts with ``slow`` (see :mod:`benchmarks.inorder_servers` and ``gateway example-backend
--slow-delay``).
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clients.calls import ALERT, decode_reply, encode_call, protocol_factory
from gateway.processes import (
    ExampleBackend,
    GatewayProcess,
    example_backend_argv,
    start_gateway,
    start_process,
)

FACTORY = protocol_factory("binary")
PASSTHROUGH = '[methods.alertSupervisor]\nmode = "passthrough"\n'


@dataclass(frozen=True)
class Target:
    host: str
    port: int


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


class Caller:
    """One blocking framed connection making calls one after another."""

    def __init__(self, target: Target, timeout: float = 30.0) -> None:
        self._sock = socket.create_connection((target.host, target.port), timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._seqid = 0

    def alert(self, message: str) -> float:
        """Call alertSupervisor(message); return the seconds it took (raises on a bad reply)."""
        self._seqid += 1
        call = encode_call(FACTORY, ALERT, self._seqid, message=message)
        started = time.perf_counter()
        self._sock.sendall(struct.pack("!i", len(call)) + call)
        seqid, result = decode_reply(FACTORY, read_frame(self._sock), ALERT)
        elapsed = time.perf_counter() - started
        if seqid != self._seqid or result != "ack:" + message:
            raise AssertionError(f"crossed reply: {seqid} {result!r} for {message!r}")
        return elapsed

    def close(self) -> None:
        self._sock.close()


def read_frame(sock: socket.socket) -> bytes:
    (size,) = struct.unpack("!i", _read_exactly(sock, 4))
    return _read_exactly(sock, size)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-reply")
        chunks += chunk
    return bytes(chunks)


def _threads(n: int, fn: Callable[[int], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=fn, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    return threads


def _loop_until(stop: threading.Event, target: Target, prefix: str, out: list[float]) -> None:
    caller = Caller(target)
    try:
        i = 0
        while not stop.is_set():
            out.append(caller.alert(f"{prefix}-{i}"))
            i += 1
    finally:
        caller.close()


def quiet(target: Target, clients: int = 4, calls: int = 25) -> list[float]:
    """Latencies of ``clients`` sequential callers making ``calls`` fast calls each, alone."""
    out: list[float] = []

    def run(i: int) -> None:
        caller = Caller(target)
        try:
            for n in range(calls):
                out.append(caller.alert(f"quiet-{i}-{n}"))
        finally:
            caller.close()

    for thread in _threads(clients, run):
        thread.join(60)
    return out


def fast_beside_slow(
    target: Target, seconds: float = 2.5, slow: int = 4, fast: int = 4
) -> list[float]:
    """The fast calls' latencies while ``slow`` callers make slow calls back to back."""
    stop = threading.Event()
    slow_out: list[float] = []
    fast_out: list[float] = []
    slow_threads = _threads(slow, lambda i: _loop_until(stop, target, f"slow-{i}", slow_out))
    time.sleep(0.2)  # the slow calls are underway first
    fast_threads = _threads(fast, lambda i: _loop_until(stop, target, f"fast-{i}", fast_out))
    time.sleep(seconds)
    stop.set()
    for thread in fast_threads + slow_threads:
        thread.join(60)
    return fast_out


def slow_at_once(target: Target, n: int = 16) -> float:
    """Seconds until all of ``n`` distinct slow calls made at once are answered."""
    callers = [Caller(target) for _ in range(n)]
    barrier = threading.Barrier(n + 1)

    def run(i: int) -> None:
        barrier.wait()
        callers[i].alert(f"slow-at-once-{i}")

    threads = _threads(n, run)
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join(60)
    elapsed = time.perf_counter() - started
    for caller in callers:
        caller.close()
    return elapsed


def burst_beside_sequential(
    target: Target, burst: int = 3000, others: int = 4
) -> tuple[list[float], float]:
    """(the other callers' latencies, the burst's seconds) while one client pipelines
    ``burst`` calls on one connection and reads their replies."""
    stop = threading.Event()
    other_out: list[float] = []
    sock = socket.create_connection((target.host, target.port), timeout=60)
    frames = []
    for i in range(burst):
        call = encode_call(FACTORY, ALERT, i + 1, message=f"burst-{i}")
        frames.append(struct.pack("!i", len(call)) + call)
    answered = [0]

    def read_all() -> None:
        # Checked without decoding (this thread shares the GIL with the callers measured):
        # a strict binary reply's seqid follows its name, its result is "ack:burst-<i>".
        for _ in range(burst):
            reply = read_frame(sock)
            (name_len,) = struct.unpack_from("!i", reply, 4)
            (seqid,) = struct.unpack_from("!i", reply, 8 + name_len)
            if b"ack:burst-%d" % (seqid - 1) not in reply:
                raise AssertionError(f"crossed burst reply {seqid} {reply!r}")
            answered[0] += 1

    reader = threading.Thread(target=read_all, daemon=True)
    threads = _threads(others, lambda i: _loop_until(stop, target, f"other-{i}", other_out))
    time.sleep(0.2)
    started = time.perf_counter()
    reader.start()
    sock.sendall(b"".join(frames))  # the gateway reads it as fast as its limits let it
    reader.join(120)
    took = time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join(60)
    sock.close()
    if answered[0] != burst:
        raise AssertionError(f"burst: {answered[0]} of {burst} replies")
    return other_out, took


# -- the backends and the gateway, as real processes ---------------------------------------


@contextmanager
def backend(kind: str, fast: float, slow: float, gen_dir: Path | None = None) -> Iterator[Target]:
    """An in-order backend: ``example`` (``gateway example-backend``), ``thriftpy2`` or
    ``apache`` (see benchmarks.inorder_servers); stopped by PID on exit."""
    if kind == "example":
        argv = [*example_backend_argv(delay=fast), "--slow-delay", str(slow)]
        process = start_process(argv)
        try:
            started = ExampleBackend.from_process(process)
            yield Target(started.host, started.port)
        finally:
            process.stop()
        return
    argv = [sys.executable, "-m", "benchmarks.inorder_servers", kind]
    argv += ["--fast", str(fast), "--slow", str(slow)]
    if gen_dir is not None:
        argv += ["--gen-dir", str(gen_dir)]
    process = start_process(argv)
    try:
        match = process.wait_for_line(r"(\w+) server listening on (\S+):(\d+)", timeout=20)
        yield Target(match[2], int(match[3]))
    finally:
        process.stop()


@contextmanager
def gateway_process(
    target: Target, config_dir: Path, extra: str = "", admin: bool = False
) -> Iterator[GatewayProcess]:
    """``gateway serve`` with default settings in front of ``target``, alertSupervisor in
    passthrough (plus ``extra`` config lines for the default backend); stopped on exit."""
    config = config_dir / "gw.toml"
    config.write_text(f"[backends.default]\n{extra}\n{PASSTHROUGH}")
    address = f"{target.host}:{target.port}"
    with start_gateway(backend=address, config=config, node_id="pool", admin=admin) as gw:
        yield gw


@contextmanager
def gateway(target: Target, config_dir: Path, extra: str = "") -> Iterator[Target]:
    """:func:`gateway_process`, as the target its clients call."""
    with gateway_process(target, config_dir, extra) as gw:
        yield Target(gw.host, gw.port)
