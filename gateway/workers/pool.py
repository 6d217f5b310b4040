"""The worker processes of a multi-worker node: started, watched, restarted, signalled.

Each worker is ``gateway serve`` with the hidden worker flags (:mod:`gateway.workers.role`),
spawned through the reactor with a fresh listening socket as fd 3, its stdout a pipe the
pool reads lines from (``ready``, the drain summary), its stderr the supervisor's (log lines
go straight out) and its stdin a pipe the supervisor never writes: its end of file tells the
worker that the supervisor is gone.

A worker that exits while the node runs is restarted in its slot after a delay that starts
at ``first_delay`` and doubles (up to ``max_delay``) while the worker keeps dying within
``stable_after`` seconds of starting: a crash loop costs one start every ``max_delay``,
it cannot spin. Every exit and restart is logged.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from gateway.workers.role import READY_PATTERN

log = logging.getLogger("gateway.supervisor")

LISTEN_FD = 3  # where a worker finds its listening socket
FIRST_DELAY = 0.1  # seconds before restarting a worker that died
MAX_DELAY = 10.0
STABLE_AFTER = 10.0  # a worker that lived this long restarts after FIRST_DELAY again

_READY = re.compile(READY_PATTERN)


@dataclass
class Slot:
    """One worker position; its process changes with each restart."""

    index: int
    pid: int | None = None
    transport: Any = None  # IProcessTransport of the running worker
    started_at: float = 0.0
    ready: bool = False
    restarts: int = 0
    delay: float = FIRST_DELAY
    pending: Any = None  # DelayedCall of a scheduled restart
    lines: list[str] = field(default_factory=list)  # stdout lines of the current worker


@dataclass(frozen=True)
class Exit:
    """How a worker ended: its stdout lines, exit code or signal."""

    index: int
    pid: int
    code: int | None
    signal: int | None
    lines: list[str]
    ran_for: float

    def describe(self) -> str:
        if self.signal is not None:
            how = f"killed by signal {self.signal}"
        else:
            how = f"exited with {self.code}"
        return f"worker {self.index} (pid {self.pid}) {how} after {self.ran_for:.1f}s"


class _WorkerProtocol(ProcessProtocol):
    def __init__(self, pool: WorkerPool, slot: Slot) -> None:
        self._pool = pool
        self._slot = slot
        self._partial = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != 1:
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            self._pool._line(self._slot, raw.decode("utf-8", "replace").rstrip("\r"))

    def processEnded(self, reason: Failure) -> None:
        code: int | None = 0
        sig: int | None = None
        if isinstance(reason.value, ProcessTerminated):
            code, sig = reason.value.exitCode, reason.value.signal
        if self._partial:
            self._pool._line(self._slot, self._partial.decode("utf-8", "replace"))
        self._pool._ended(self._slot, code, sig)


class WorkerPool:
    """``count`` workers; ``command(index)`` is a worker's argv (fd 3 is its socket).

    Callbacks: ``on_spawn(index, pid)``, ``on_ready(index)``, ``on_exit(Exit)`` (before any
    restart is scheduled). :meth:`stop` ends the restarts and signals every worker.
    """

    def __init__(
        self,
        reactor: Any,
        count: int,
        command: Callable[[int], list[str]],
        listener: Callable[[], socket.socket],
        *,
        on_spawn: Callable[[int, int], None] = lambda i, p: None,
        on_ready: Callable[[int], None] = lambda i: None,
        on_exit: Callable[[Exit], None] = lambda e: None,
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
        stable_after: float = STABLE_AFTER,
    ) -> None:
        self._reactor = reactor
        self._command = command
        self._listener = listener
        self._on_spawn = on_spawn
        self._on_ready = on_ready
        self._on_exit = on_exit
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._stable_after = stable_after
        self.slots = [Slot(i, delay=first_delay) for i in range(count)]
        self.stopping = False
        self._all_exited: list[Deferred[None]] = []

    # -- state --------------------------------------------------------------------------

    @property
    def alive(self) -> list[Slot]:
        return [s for s in self.slots if s.pid is not None]

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self.slots)

    def all_ready(self) -> bool:
        return all(s.ready for s in self.slots)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)

    def _spawn(self, slot: Slot) -> None:
        slot.pending = None
        if self.stopping:
            return
        try:
            sock = self._listener()
        except OSError as exc:
            log.error("worker %d: cannot bind its listening socket: %s", slot.index, exc)
            self._schedule(slot)
            return
        argv = self._command(slot.index)
        slot.lines = []
        slot.ready = False
        try:
            slot.transport = self._reactor.spawnProcess(
                _WorkerProtocol(self, slot),
                argv[0],
                argv,
                env=dict(os.environ),
                childFDs={0: "w", 1: "r", 2: sys.stderr.fileno(), LISTEN_FD: sock.fileno()},
            )
        except OSError as exc:
            log.error("worker %d: cannot start: %s", slot.index, exc)
            self._schedule(slot)
            return
        finally:
            sock.close()  # the worker holds the only copy: it closes with the worker
        slot.pid = slot.transport.pid
        slot.started_at = self._reactor.seconds()
        assert slot.pid is not None
        self._on_spawn(slot.index, slot.pid)

    def _line(self, slot: Slot, line: str) -> None:
        slot.lines.append(line)
        if not slot.ready and _READY.match(line):
            slot.ready = True
            self._on_ready(slot.index)

    def _ended(self, slot: Slot, code: int | None, sig: int | None) -> None:
        assert slot.pid is not None
        ended = Exit(
            slot.index,
            slot.pid,
            code,
            sig,
            slot.lines,
            self._reactor.seconds() - slot.started_at,
        )
        slot.pid, slot.transport, slot.ready = None, None, False
        self._on_exit(ended)
        if self.stopping:
            if not self.alive:
                waiters, self._all_exited = self._all_exited, []
                for d in waiters:
                    d.callback(None)
            return
        if ended.ran_for >= self._stable_after:
            slot.delay = self._first_delay
        log.warning(
            "%s; restarting in %gs (restart %d of this worker)",
            ended.describe(),
            slot.delay,
            slot.restarts + 1,
        )
        self._schedule(slot)

    def _schedule(self, slot: Slot) -> None:
        if self.stopping:
            return
        delay = slot.delay
        slot.delay = min(self._max_delay, slot.delay * 2)
        slot.restarts += 1
        slot.pending = self._reactor.callLater(delay, self._spawn, slot)

    # -- signals ------------------------------------------------------------------------

    def signal_ready(self, signum: int) -> int:
        """Send ``signum`` to every worker that is serving (one still starting up has not
        installed its handlers yet and reads its config afresh anyway); how many got it."""
        sent = 0
        for slot in self.slots:
            if slot.ready and slot.pid is not None:
                sent += self._kill(slot.pid, signum)
        return sent

    def stop(self, signum: int = signal.SIGTERM) -> Deferred[None]:
        """No more restarts; ``signum`` to every worker; fires once all have exited."""
        self.stopping = True
        for slot in self.slots:
            if slot.pending is not None and slot.pending.active():
                slot.pending.cancel()
            slot.pending = None
        d: Deferred[None] = Deferred()
        if not self.alive:
            d.callback(None)
            return d
        self._all_exited.append(d)
        for slot in self.alive:
            assert slot.pid is not None
            self._kill(slot.pid, signum)
        return d

    def kill_all(self) -> None:
        """SIGKILL every worker still running (a drain that overran its deadline)."""
        for slot in self.alive:
            assert slot.pid is not None
            log.warning("worker %d (pid %d) still running: killing it", slot.index, slot.pid)
            self._kill(slot.pid, signal.SIGKILL)

    @staticmethod
    def _kill(pid: int, signum: int) -> int:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # exited, not reaped yet: its end is on the way
            return 0
        return 1
