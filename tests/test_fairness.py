"""Fair share between client connections: the round-robin queue, and which client a
backend call is counted against (including a flight's leader calling later, as in cluster
mode, and followers who cost nothing)."""

from __future__ import annotations

from typing import Any

import pytest
from thrift.Thrift import TType
from thrift_messages import message
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from gateway.config import build_config
from gateway.contracts import MethodPolicy, Outcome, Source
from gateway.flights import FlightTable
from gateway.proxy.fairness import FairQueue, client_scope, current_client
from gateway.proxy.handler import CallHandler
from gateway.proxy.router import Router
from gateway.stats import NodeStats
from gateway.testing import ScriptedBackend
from gateway.thrift import DEFAULT_LIMITS, ProtocolKind

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")


def test_items_are_popped_round_robin_across_clients() -> None:
    """Each client in turn gives one item, whatever how many each queued."""
    q: FairQueue[str] = FairQueue(lambda item: not item.startswith("dead"))
    for i in range(3):
        q.push("a", f"a{i}")
    q.push("b", "b0")
    q.push("c", "c0")
    assert [q.pop(lambda c: True) for _ in range(5)] == ["a0", "b0", "c0", "a1", "a2"]
    assert q.pop(lambda c: True) is None and len(q) == 0


def test_ineligible_clients_are_skipped_and_ended_items_too() -> None:
    """A client at its share is passed over; an item reported ended is never popped."""
    q: FairQueue[str] = FairQueue(lambda item: not item.startswith("dead"))
    q.push("a", "dead-a0")
    q.discard("a")
    q.push("a", "a1")
    q.push("b", "b0")
    assert q.pop(lambda c: c != "b") == "a1"
    assert q.pop(lambda c: c != "b") is None
    assert q.pop(lambda c: True) == "b0"


def test_heaviest_gives_up_its_newest_item() -> None:
    """The client with the most items waiting is found, and its newest item taken."""
    q: FairQueue[str] = FairQueue(lambda item: True)
    for item in ("a0", "a1", "a2"):
        q.push("a", item)
    q.push("b", "b0")
    assert q.heaviest() == "a" and q.pop_newest("a") == "a2" and q.waiting("a") == 2


def call(text: bytes) -> bytes:
    return message(ProtocolKind.BINARY, "alertSupervisor", [(1, TType.STRING, text)], seqid=1)


class RecordingBackend(ScriptedBackend):
    """Records which client each backend call was made for."""

    def __init__(self) -> None:
        super().__init__(ProtocolKind.BINARY)
        self.clients: list[object] = []

    def call(self, *args: Any, **kw: Any) -> Deferred[bytes]:
        self.clients.append(current_client())
        return super().call(*args, **kw)


class LaterCoordinator:
    """Runs a flight's backend call only when told, outside any client's scope: what a
    cluster node does once Redis has decided it leads."""

    def __init__(self) -> None:
        self.waiting: list[Any] = []

    def execute(self, key: str, policy: MethodPolicy, call_backend: Any) -> Deferred[Outcome]:
        d: Deferred[Outcome] = Deferred()
        self.waiting.append((call_backend, d))
        return d

    def cached(self, key: str, policy: MethodPolicy) -> Outcome | None:
        return None

    def run(self) -> None:
        for call_backend, d in self.waiting:
            call_backend().addCallback(lambda r, d=d: d.callback(Outcome(r, Source.BACKEND)))


def test_a_leader_calling_later_is_counted_against_its_own_client() -> None:
    """The backend call of a flight whose leader runs it later (cluster mode) belongs to the
    client that led it; the client that joined it makes no backend call at all."""
    config = build_config(
        {"methods": {"alertSupervisor": {"mode": "coalesce", "idempotent": True}}},
        {"listen": "127.0.0.1:0", "backend": "127.0.0.1:1"},
    )
    clock = Clock()
    backend = RecordingBackend()
    coordinator = LaterCoordinator()
    handler = CallHandler(
        Router(config), {"default": backend}, FlightTable(clock), coordinator, NodeStats(),
        clock, DEFAULT_LIMITS,
    )  # fmt: skip
    leader, follower = object(), object()
    with client_scope(leader):
        handler.handle(call(b"same"), ProtocolKind.BINARY)
    with client_scope(follower):
        handler.handle(call(b"same"), ProtocolKind.BINARY)
    coordinator.run()  # outside both scopes
    assert backend.clients == [leader]
    assert current_client() is None  # the scopes were closed again
