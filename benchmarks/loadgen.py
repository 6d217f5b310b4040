"""An in-process herd that remembers, per call, which target it went to and when it finished.

``clients.herd`` reports one latency distribution for all targets; the cluster benchmark
needs them split by gateway node (the leader's callers vs. remote followers) and the
absolute finish times (how long after the leader's first reply a follower got its answer).
Runs inside a Twisted reactor; every call has a timeout, so a run is bounded in time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from clients.calls import ALERT
from clients.pipelined import PipelinedConnection, close_all, connect


@dataclass(frozen=True)
class CallRecord:
    target: int  # index into the herd's targets
    sent: float  # time.perf_counter() when the call was written
    done: float  # time.perf_counter() when its reply (or failure) arrived
    ok: bool  # the reply was exactly this call's answer

    @property
    def latency(self) -> float:
        return self.done - self.sent


class Herd:
    """``clients`` framed connections, client ``i`` to ``targets[i % len(targets)]``."""

    def __init__(
        self,
        reactor: Any,
        targets: Sequence[tuple[str, int]],
        clients: int,
        timeout: float = 30.0,
    ) -> None:
        self.reactor = reactor
        self.targets = list(targets)
        self.clients = clients
        self.timeout = timeout
        self.conns: list[tuple[int, PipelinedConnection]] = []  # (target index, connection)
        self.connect_errors = 0

    @defer.inlineCallbacks
    def connect(self) -> Any:
        """Open every connection (concurrently); failures are counted, not raised."""

        def one(i: int) -> defer.Deferred[PipelinedConnection]:
            host, port = self.targets[i % len(self.targets)]
            return connect(self.reactor, host, port, "binary", False, self.timeout)

        results = yield defer.DeferredList([one(i) for i in range(self.clients)])
        for i, (ok, conn) in enumerate(results):
            if ok:
                self.conns.append((i % len(self.targets), conn))
            else:
                self.connect_errors += 1

    def fire(self, message: str) -> defer.Deferred[list[CallRecord]]:
        """Every connection calls ``alertSupervisor(message)`` at once; fires with one record
        per call when all have answered, failed or timed out."""
        expected = "ack:" + message
        records: list[CallRecord] = []

        def call(target: int, conn: PipelinedConnection) -> defer.Deferred[None]:
            sent = time.perf_counter()

            def done(result: object) -> None:
                ok = result == expected
                records.append(CallRecord(target, sent, time.perf_counter(), ok))

            return conn.call(ALERT, self.timeout, message=message).addBoth(done)

        calls = [call(target, conn) for target, conn in self.conns]
        return defer.gatherResults(calls).addCallback(lambda _: records)

    @defer.inlineCallbacks
    def close(self) -> Any:
        """Hang up every connection and wait (at most 5 s) until they are gone."""
        yield close_all(self.reactor, [c for _, c in self.conns])
        self.conns = []
