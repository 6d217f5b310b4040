"""DeferredDict: values by key, with Deferreds for those not there yet."""

from __future__ import annotations

from typing import Any

import pytest
from deferred_helpers import results
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gateway.primitives.asyncdict import DeferredDict

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")


def test_get_present_value_fires_at_once() -> None:
    """get() of a stored value returns an already-fired Deferred."""
    dd: DeferredDict[str, int] = DeferredDict()
    dd.set("a", 1)
    assert results(dd.get("a")) == [1]


def test_get_missing_value_waits_for_set() -> None:
    """get() of a missing key fires when the key is set."""
    dd: DeferredDict[str, int] = DeferredDict()
    out = results(dd.get("a"))
    assert out == []
    dd.set("a", 1)
    assert out == [1]


def test_set_fires_every_waiter() -> None:
    """All waiters of a key get the value."""
    dd: DeferredDict[str, int] = DeferredDict()
    outs = [results(dd.get("a")) for _ in range(3)]
    dd.set("a", 1)
    assert outs == [[1]] * 3


def test_set_fires_only_that_keys_waiters() -> None:
    """Setting one key leaves the waiters of other keys waiting."""
    dd: DeferredDict[str, int] = DeferredDict()
    out_b = results(dd.get("b"))
    dd.set("a", 1)
    assert (out_b, dd.waiting_keys()) == ([], ["b"])


def test_keep_values_stores_value() -> None:
    """With keep_values (the default) a set value is stored for later readers."""
    dd: DeferredDict[str, int] = DeferredDict()
    dd.set("a", 1)
    assert ("a" in dd, len(dd)) == (True, 1)


def test_keep_values_false_does_not_store() -> None:
    """With keep_values=False a value wakes the current waiters and is not stored."""
    dd: DeferredDict[str, int] = DeferredDict(keep_values=False)
    first = results(dd.get("a"))
    dd.set("a", 1)
    later = results(dd.get("a"))
    assert (first, later, len(dd), "a" in dd) == ([1], [], 0, False)


def test_waiter_reading_again_sees_stored_value() -> None:
    """A waiter's callback that calls get() again sees the value just set."""
    dd: DeferredDict[str, int] = DeferredDict()
    again: list[list[Any]] = []
    dd.get("a").addCallback(lambda _: again.append(results(dd.get("a"))))
    dd.set("a", 1)
    assert again == [[1]]


def test_waiter_reading_again_without_keep_values_waits_for_next_set() -> None:
    """With keep_values=False a waiter's callback that calls get() again waits for the next set."""
    dd: DeferredDict[str, int] = DeferredDict(keep_values=False)
    again: list[list[Any]] = []
    dd.get("a").addCallback(lambda _: again.append(results(dd.get("a"))))
    dd.set("a", 1)
    assert again == [[]]
    dd.set("a", 2)
    assert again == [[2]]


def test_fail_fires_waiters_with_failure() -> None:
    """fail() errbacks every waiter, each with its own Failure of the same exception."""
    dd: DeferredDict[str, int] = DeferredDict()
    out1, out2 = results(dd.get("a")), results(dd.get("a"))
    error = RuntimeError("x")
    dd.fail("a", Failure(error))
    assert out1[0] is not out2[0]
    assert (out1[0].value, out2[0].value) == (error, error)


def test_fail_accepts_an_exception() -> None:
    """fail() also takes a plain exception instance."""
    dd: DeferredDict[str, int] = DeferredDict()
    out = results(dd.get("a"))
    dd.fail("a", KeyError("k"))
    assert out[0].check(KeyError)


def test_fail_is_not_stored() -> None:
    """After fail() a new reader waits again instead of getting the failure."""
    dd: DeferredDict[str, int] = DeferredDict()
    results(dd.get("a"))
    dd.fail("a", RuntimeError("x"))
    later = results(dd.get("a"))
    assert (later, len(dd), dd.waiting_keys()) == ([], 0, ["a"])


def test_fail_leaves_stored_value() -> None:
    """fail() on a key with a stored value leaves the value in place."""
    dd: DeferredDict[str, int] = DeferredDict()
    dd.set("a", 1)
    dd.fail("a", RuntimeError("x"))
    assert results(dd.get("a")) == [1]


def test_pop_returns_and_removes_value() -> None:
    """pop() returns the stored value and removes it."""
    dd: DeferredDict[str, int] = DeferredDict()
    dd.set("a", 1)
    assert (dd.pop("a"), "a" in dd) == (1, False)


def test_pop_missing_raises_key_error() -> None:
    """pop() of a missing key without a default raises KeyError."""
    dd: DeferredDict[str, int] = DeferredDict()
    with pytest.raises(KeyError):
        dd.pop("a")


def test_pop_missing_returns_default() -> None:
    """pop() of a missing key with a default returns the default."""
    dd: DeferredDict[str, int] = DeferredDict()
    assert dd.pop("a", None) is None


def test_pop_with_two_defaults_is_a_type_error() -> None:
    """pop() takes at most one default, like dict.pop."""
    dd: DeferredDict[str, int] = DeferredDict()
    pop: Any = dd.pop
    with pytest.raises(TypeError):
        pop("a", 1, 2)


def test_pop_leaves_waiters_alone() -> None:
    """pop() of a key with waiters but no value keeps the waiters waiting."""
    dd: DeferredDict[str, int] = DeferredDict()
    out = results(dd.get("a"))
    dd.pop("a", None)
    dd.set("a", 1)
    assert out == [1]


def test_discard_removes_value() -> None:
    """discard() removes a stored value."""
    dd: DeferredDict[str, int] = DeferredDict()
    dd.set("a", 1)
    dd.discard("a")
    assert len(dd) == 0


def test_discard_missing_key_is_fine() -> None:
    """discard() of a missing key does nothing."""
    dd: DeferredDict[str, int] = DeferredDict()
    dd.discard("a")
    assert len(dd) == 0


def test_get_timeout_fails_with_timeout_error() -> None:
    """A waiter with a timeout fails with defer.TimeoutError if no value arrives in time."""
    clock = Clock()
    dd: DeferredDict[str, int] = DeferredDict(clock)
    out = results(dd.get("a", timeout=3))
    clock.advance(2.9)
    assert out == []
    clock.advance(0.1)
    assert out[0].check(defer.TimeoutError)


def test_timed_out_waiter_is_removed() -> None:
    """A timed-out waiter no longer counts as waiting and leaves no trace of the key."""
    clock = Clock()
    dd: DeferredDict[str, int] = DeferredDict(clock)
    results(dd.get("a", timeout=1))
    clock.advance(1)
    assert (dd.waiter_count("a"), dd.waiting_keys()) == (0, [])


def test_timeout_of_one_waiter_leaves_others() -> None:
    """One waiter timing out leaves the other waiters of the key waiting."""
    clock = Clock()
    dd: DeferredDict[str, int] = DeferredDict(clock)
    results(dd.get("a", timeout=1))
    other = results(dd.get("a"))
    clock.advance(1)
    dd.set("a", 1)
    assert other == [1]


def test_value_in_time_cancels_timeout() -> None:
    """A waiter that gets its value in time leaves no delayed call on the clock."""
    clock = Clock()
    dd: DeferredDict[str, int] = DeferredDict(clock)
    out = results(dd.get("a", timeout=1))
    dd.set("a", 1)
    assert (out, clock.getDelayedCalls()) == ([1], [])


def test_timeout_without_clock_is_an_error() -> None:
    """Asking for a timeout from a DeferredDict without a clock raises ValueError."""
    dd: DeferredDict[str, int] = DeferredDict()
    with pytest.raises(ValueError, match="clock"):
        dd.get("a", timeout=1)


def test_cancel_removes_only_that_waiter() -> None:
    """Cancelling one waiter fails it with CancelledError; the others still get the value."""
    dd: DeferredDict[str, int] = DeferredDict()
    cancelled = dd.get("a")
    out_cancelled = results(cancelled)
    out_other = results(dd.get("a"))
    cancelled.cancel()
    assert dd.waiter_count("a") == 1
    dd.set("a", 1)
    assert out_cancelled[0].check(CancelledError)
    assert out_other == [1]


def test_cancelling_last_waiter_leaves_nothing_behind() -> None:
    """A key whose only waiter cancelled has no trace: no waiters, no value."""
    dd: DeferredDict[str, int] = DeferredDict()
    d = dd.get("a")
    results(d)
    d.cancel()
    assert (dd.waiting_keys(), dd.waiter_count("a"), len(dd), "a" in dd) == ([], 0, 0, False)


def test_waiter_callback_cancelling_another_waiter() -> None:
    """A waiter's callback may cancel a later waiter; the waiters after it still get the value."""
    dd: DeferredDict[str, int] = DeferredDict()
    second: list[Deferred[int]] = []
    dd.get("a").addCallback(lambda _: second[0].cancel())
    second.append(dd.get("a"))
    out2 = results(second[0])
    out3 = results(dd.get("a"))
    dd.set("a", 1)
    assert out2[0].check(CancelledError)
    assert out3 == [1]


def test_waiting_keys_and_waiter_count() -> None:
    """waiting_keys lists keys with waiters; waiter_count counts them per key."""
    dd: DeferredDict[str, int] = DeferredDict()
    dd.get("a")
    dd.get("b")
    dd.get("a")
    dd.set("b", 2)
    assert (dd.waiting_keys(), dd.waiter_count("a"), dd.waiter_count("b")) == (["a"], 2, 0)


def test_len_and_contains_count_stored_values_only() -> None:
    """len() and `in` see stored values, not keys that are only waited for."""
    dd: DeferredDict[str, int] = DeferredDict()
    dd.get("waited")
    dd.set("stored", 1)
    assert (len(dd), "stored" in dd, "waited" in dd) == (1, True, False)
