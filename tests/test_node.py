"""GatewayNode.stop: draining in-flight calls, and the summary when the drain times out."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from gateway.config import build_config
from gateway.proxy.node import DrainSummary, GatewayNode
from gateway.testing import DirectCoordinator

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")


def make_node() -> tuple[GatewayNode, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    config = build_config({}, {"listen": "127.0.0.1:0", "backend": "127.0.0.1:1"})
    node = GatewayNode(config, reactor, DirectCoordinator())
    node.start()  # MemoryReactor only records the listen and the backend connects
    assert node.health()["listening"] is True
    return node, reactor


def test_stop_with_nothing_in_flight_drains_at_once() -> None:
    """No calls in flight: stop() fires at once with drained=True and stops listening."""
    node, _ = make_node()
    out: list[Any] = []
    node.stop(0.5).addBoth(out.append)
    [summary] = out
    assert isinstance(summary, DrainSummary)
    assert summary.drained is True and summary.abandoned == 0
    assert "stopped: drained;" in summary.line("n1")
    assert node.port is None


def test_drain_timeout_reports_abandoned_calls() -> None:
    """A client call still unanswered after drain_timeout (and the grace to write the replies
    of abandoned flights): drained=False, abandoned=1, said in line()."""
    node, reactor = make_node()
    stuck: Deferred[bytes] = Deferred()
    node.calls.add(stuck)
    out: list[Any] = []
    node.stop(0.5).addBoth(out.append)
    reactor.advance(0.9)
    assert out == []
    reactor.advance(0.1)
    [summary] = out
    assert isinstance(summary, DrainSummary)
    assert summary.drained is False and summary.abandoned == 1
    assert "drain timed out, 1 call(s) abandoned" in summary.line("n1")
    stuck.callback(b"late")  # leaves the pool; nothing else is waiting on it
    assert len(node.calls) == 0
