"""Deadlines: many timeouts on one timer, never early, at most one resolution late."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from gateway.primitives.deadlines import Deadlines


def test_deadline_fires_never_early_and_within_one_resolution() -> None:
    """A 1 s deadline fires between 1 s and 1 s + resolution after it was added."""
    clock = Clock()
    clock.advance(0.013)
    deadlines = Deadlines(clock, resolution=0.05)
    fired: list[float] = []
    deadlines.add(1.0, lambda: fired.append(clock.seconds()))
    clock.advance(0.99)
    assert fired == []
    clock.advance(0.06)
    assert len(fired) == 1 and 1.013 <= fired[0] <= 1.013 + 0.05 + 1e-9


def test_many_deadlines_share_one_timer() -> None:
    """A thousand deadlines keep a single reactor timer."""
    clock = Clock()
    deadlines = Deadlines(clock, resolution=0.05)
    for i in range(1000):
        deadlines.add(30.0 + i / 1000, lambda: None)
    assert len(clock.getDelayedCalls()) == 1 and len(deadlines) == 1000


def test_cancelled_deadline_never_fires() -> None:
    """cancel() removes exactly that deadline; the others still fire."""
    clock = Clock()
    deadlines = Deadlines(clock)
    fired: list[str] = []
    first = deadlines.add(1.0, lambda: fired.append("first"))
    deadlines.add(1.0, lambda: fired.append("second"))
    first.cancel()
    clock.advance(2.0)
    assert fired == ["second"]
    first.cancel()  # again: harmless


def test_an_earlier_deadline_moves_the_timer_forward() -> None:
    """A deadline earlier than all others reschedules the one timer."""
    clock = Clock()
    deadlines = Deadlines(clock)
    fired: list[str] = []
    deadlines.add(10.0, lambda: fired.append("late"))
    deadlines.add(1.0, lambda: fired.append("early"))
    clock.advance(1.1)
    assert fired == ["early"]
    clock.advance(9.0)
    assert fired == ["early", "late"]
    assert clock.getDelayedCalls() == []


def test_timer_skips_buckets_whose_deadlines_were_all_cancelled() -> None:
    """When the timer wakes, buckets whose deadlines were all cancelled are skipped: the
    next wake-up is the next bucket that still holds a deadline, not each emptied one."""
    clock = Clock()
    deadlines = Deadlines(clock)
    fired: list[str] = []
    for seconds in (1.0, 2.0, 3.0):
        deadlines.add(seconds, lambda: fired.append("cancelled")).cancel()
    deadlines.add(5.0, lambda: fired.append("kept"))
    clock.advance(1.0)  # the timer set for the first bucket
    assert fired == []
    (timer,) = clock.getDelayedCalls()
    assert timer.getTime() == pytest.approx(5.0)
    clock.advance(4.0)
    assert fired == ["kept"] and len(deadlines) == 0


def test_resolution_must_be_positive() -> None:
    """A zero resolution is refused at once."""
    with pytest.raises(ValueError):
        Deadlines(Clock(), resolution=0)
