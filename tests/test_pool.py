"""DeferredPool: outstanding Deferreds and waiting for none to be left."""

from __future__ import annotations

from typing import Any

import pytest
from deferred_helpers import results
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gateway.primitives.pool import DeferredPool

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")


def test_add_returns_the_same_deferred() -> None:
    """add() hands back the very Deferred it was given."""
    pool = DeferredPool()
    d: Deferred[int] = Deferred()
    assert pool.add(d) is d


def test_add_passes_result_through() -> None:
    """Callbacks added after add() see the Deferred's own result."""
    pool = DeferredPool()
    d: Deferred[int] = Deferred()
    out = results(pool.add(d))
    d.callback(7)
    assert out == [7]


def test_add_passes_failure_through() -> None:
    """A failure of a pooled Deferred reaches its own errbacks unchanged."""
    pool = DeferredPool()
    d: Deferred[int] = Deferred()
    out = results(pool.add(d))
    error = ValueError("x")
    d.errback(error)
    assert isinstance(out[0], Failure)
    assert out[0].value is error


def test_len_counts_outstanding_deferreds() -> None:
    """len() is the number of added Deferreds that have not fired yet."""
    pool = DeferredPool()
    d1: Deferred[None] = Deferred()
    pool.add(d1)
    pool.add(Deferred())
    d1.callback(None)
    assert len(pool) == 1


def test_already_fired_deferred_leaves_at_once() -> None:
    """An already-fired Deferred is not counted as outstanding."""
    pool = DeferredPool()
    pool.add(succeed(1))
    assert len(pool) == 0


def test_notify_when_empty_fires_at_once_when_empty() -> None:
    """With test_immediately (the default) an empty pool gives an already-fired Deferred."""
    pool = DeferredPool()
    assert results(pool.notify_when_empty()) == [None]


def test_notify_without_test_immediately_waits_for_next_empty() -> None:
    """With test_immediately=False an empty pool's waiter waits for the next time it empties."""
    pool = DeferredPool()
    out = results(pool.notify_when_empty(test_immediately=False))
    assert out == []
    d: Deferred[None] = Deferred()
    pool.add(d)
    d.callback(None)
    assert out == [None]


def test_notify_fires_when_last_deferred_fires() -> None:
    """The waiter fires when the last outstanding Deferred fires, not before."""
    pool = DeferredPool()
    d1: Deferred[None] = Deferred()
    d2: Deferred[None] = Deferred()
    pool.add(d1)
    pool.add(d2)
    out = results(pool.notify_when_empty())
    d1.callback(None)
    assert out == []
    d2.callback(None)
    assert out == [None]


def test_failure_also_empties_the_pool() -> None:
    """A pooled Deferred that fails counts as done for the waiters."""
    pool = DeferredPool()
    d: Deferred[None] = Deferred()
    results(pool.add(d))
    out = results(pool.notify_when_empty())
    d.errback(RuntimeError("x"))
    assert out == [None]


def test_many_waiters_all_fire() -> None:
    """Every waiter fires when the pool empties."""
    pool = DeferredPool()
    d: Deferred[None] = Deferred()
    pool.add(d)
    outs = [results(pool.notify_when_empty()) for _ in range(5)]
    d.callback(None)
    assert outs == [[None]] * 5


def test_reusable_after_it_empties() -> None:
    """After emptying, the pool fills again and notifies new waiters at the next empty."""
    pool = DeferredPool()
    first: Deferred[None] = Deferred()
    pool.add(first)
    first.callback(None)
    second: Deferred[None] = Deferred()
    pool.add(second)
    out = results(pool.notify_when_empty())
    assert out == []
    second.callback(None)
    assert out == [None]


def test_waiter_registered_while_notifying_waits_for_next_empty() -> None:
    """A waiter added by a waiter's callback (test_immediately=False) is not fired in that round."""
    pool = DeferredPool()
    d: Deferred[None] = Deferred()
    pool.add(d)
    late: list[list[Any]] = []
    pool.notify_when_empty().addCallback(
        lambda _: late.append(results(pool.notify_when_empty(test_immediately=False)))
    )
    d.callback(None)
    assert late == [[]]


def test_waiter_timeout_fails_with_timeout_error() -> None:
    """A waiter with a timeout fails with defer.TimeoutError when the pool stays busy."""
    clock = Clock()
    pool = DeferredPool(clock)
    pool.add(Deferred())
    out = results(pool.notify_when_empty(timeout=5))
    clock.advance(4.9)
    assert out == []
    clock.advance(0.1)
    assert out[0].check(defer.TimeoutError)


def test_timed_out_waiter_is_removed() -> None:
    """A timed-out waiter is not fired again when the pool later empties."""
    clock = Clock()
    pool = DeferredPool(clock)
    d: Deferred[None] = Deferred()
    pool.add(d)
    out = results(pool.notify_when_empty(timeout=1))
    clock.advance(1)
    d.callback(None)
    assert len(out) == 1


def test_waiter_firing_cancels_its_timeout() -> None:
    """A waiter that fires in time leaves no delayed call on the clock."""
    clock = Clock()
    pool = DeferredPool(clock)
    d: Deferred[None] = Deferred()
    pool.add(d)
    pool.notify_when_empty(timeout=1)
    d.callback(None)
    assert clock.getDelayedCalls() == []


def test_timeout_without_clock_is_an_error() -> None:
    """Asking for a timeout from a pool without a clock raises ValueError."""
    pool = DeferredPool()
    pool.add(Deferred())
    with pytest.raises(ValueError, match="clock"):
        pool.notify_when_empty(timeout=1)


def test_cancel_removes_only_that_waiter() -> None:
    """Cancelling one waiter fails it with CancelledError; the others still fire."""
    pool = DeferredPool()
    d: Deferred[None] = Deferred()
    pool.add(d)
    cancelled = pool.notify_when_empty()
    out_cancelled = results(cancelled)
    out_other = results(pool.notify_when_empty())
    cancelled.cancel()
    d.callback(None)
    assert out_cancelled[0].check(CancelledError)
    assert out_other == [None]


def test_cancelling_a_waiter_cancels_its_timeout() -> None:
    """A cancelled waiter leaves no delayed call on the clock."""
    clock = Clock()
    pool = DeferredPool(clock)
    pool.add(Deferred())
    waiter = pool.notify_when_empty(timeout=2)
    results(waiter)
    waiter.cancel()
    assert clock.getDelayedCalls() == []
