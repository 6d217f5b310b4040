"""FlightTable: the node's one table of in-flight calls (join, lifetime, background, drain)."""

from __future__ import annotations

from typing import Any

import pytest
from deferred_helpers import results
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock

from gateway.contracts import BackendReply, Outcome, ReplyKind, Source
from gateway.errors import ShuttingDown
from gateway.flights import FlightTable
from gateway.observe import HotKeys

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")

KEY = "sup.alertSupervisor:0123456789abcdef0123456789abcdef"
OUTCOME = Outcome(BackendReply(b"reply", "binary", ReplyKind.SUCCESS), Source.BACKEND)


class Starts:
    """A start function that records each call and hands out a Deferred the test fires."""

    def __init__(self) -> None:
        self.started: list[Deferred[Outcome]] = []

    def __call__(self) -> Deferred[Outcome]:
        d: Deferred[Outcome] = Deferred()
        self.started.append(d)
        return d


def gone(d: Deferred[Any]) -> None:
    """Hang this caller up (its CancelledError is expected)."""
    d.addErrback(lambda f: f.trap(CancelledError))
    d.cancel()


def test_identical_calls_join_one_flight() -> None:
    """Calls for one key while its flight runs start nothing new and get (outcome, shared)."""
    table, start = FlightTable(Clock()), Starts()
    first, second = results(table.join(KEY, start)), results(table.join(KEY, start))
    assert len(start.started) == 1 and len(table) == 1
    start.started[0].callback(OUTCOME)
    assert first == [(OUTCOME, False)] and second == [(OUTCOME, True)]
    assert len(table) == 0


def test_flight_outlives_its_callers_and_stays_joinable() -> None:
    """After every caller hung up the flight keeps running, and a new caller joins it."""
    table, start = FlightTable(Clock()), Starts()
    gone(table.join(KEY, start))
    assert not start.started[0].called and len(table) == 1
    later = results(table.join(KEY, start))
    assert len(start.started) == 1
    start.started[0].callback(OUTCOME)
    assert later == [(OUTCOME, True)]


def test_finished_flight_is_not_joined() -> None:
    """Once its outcome is in, the next identical call starts a new flight."""
    table, start = FlightTable(Clock()), Starts()
    table.join(KEY, start)
    start.started[0].callback(OUTCOME)
    table.join(KEY, start)
    assert len(start.started) == 2


def test_outcome_already_in_is_never_a_flight() -> None:
    """A start() that answers at once (a cache hit) leaves nothing in the table."""
    table = FlightTable(Clock())
    out = results(table.join(KEY, lambda: succeed(OUTCOME)))
    assert out == [(OUTCOME, False)] and len(table) == 0 and table.flights() == []


def test_flights_are_listed_oldest_first_with_their_callers() -> None:
    """flights() shows key, backend, upstream method, age and callers, oldest first."""
    clock, start = Clock(), Starts()
    table = FlightTable(clock)
    table.join(KEY, start)
    clock.advance(2)
    other = "poetry.Poetry:getPoem:" + "f" * 32
    table.join(other, start)
    table.join(other, start)
    clock.advance(1)
    old, new = table.flights()
    assert (old.key, old.backend, old.method, old.age, old.callers) == (
        KEY,
        "sup",
        "alertSupervisor",
        3.0,
        1,
    )
    assert (new.method, new.age, new.callers, new.background) == ("Poetry:getPoem", 1.0, 2, False)


def test_drain_waits_for_a_flight_nobody_waits_for() -> None:
    """drain() fires only once a flight whose callers all left has finished."""
    clock, start = Clock(), Starts()
    table = FlightTable(clock)
    gone(table.join(KEY, start))
    drained = results(table.drain(10))
    clock.advance(5)
    assert drained == []
    start.started[0].callback(OUTCOME)
    assert drained == [0]


def test_drain_waits_for_spawned_background_work() -> None:
    """Background work registered with spawn() is listed and waited for by drain()."""
    clock = Clock()
    table = FlightTable(clock)
    refresh: Deferred[None] = Deferred()
    table.spawn(KEY, refresh)
    assert [f.background for f in table.flights()] == [True]
    drained = results(table.drain(10))
    assert drained == []
    refresh.callback(None)
    assert drained == [0] and len(table) == 0


def test_drain_timeout_abandons_what_is_left() -> None:
    """At the deadline every flight is cancelled; its callers get ShuttingDown."""
    clock, start = Clock(), Starts()
    table = FlightTable(clock)
    caller = results(table.join(KEY, start))
    drained = results(table.drain(1))
    clock.advance(1)
    assert drained == [1]
    assert start.started[0].called  # cancelled: a cluster leader publishes "abandoned" here
    assert caller[0].check(ShuttingDown)
    assert len(table) == 0


def test_finished_flights_are_reported_as_hot_keys_once_with_their_callers() -> None:
    """A flight is reported to the hot-key recorder once when it ends, with every caller it
    answered and the first caller's preview; background work is not reported."""
    hot = HotKeys()
    table, start = FlightTable(Clock(), hot_keys=hot), Starts()
    for _ in range(3):
        table.join(KEY, start, preview='{1: "disk full"}')
    table.spawn(KEY, succeed(None))
    assert len(hot) == 0  # nothing until the flight has ended
    start.started[0].callback(OUTCOME)
    [entry] = hot.drain()
    assert (entry.method, entry.callers, entry.preview) == (
        "sup.alertSupervisor",
        3,
        '{1: "disk full"}',
    )
    assert entry.key_id == KEY.rsplit(":", 1)[1][:12]


def test_oldest_started_at_tracks_the_oldest_running_flight() -> None:
    """oldest_started_at is the start of the oldest flight still running, None when idle."""
    clock, start = Clock(), Starts()
    table = FlightTable(clock)
    assert table.oldest_started_at() is None
    clock.advance(5)
    table.join(KEY, start)
    clock.advance(2)
    table.join("other.m:" + "0" * 32, start)
    assert table.oldest_started_at() == 5.0
    start.started[0].callback(OUTCOME)
    assert table.oldest_started_at() == 7.0
