"""exponential_backoff and RetryingCall, driven by a fake Clock."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import pytest
from deferred_helpers import DeferredSource, failure_of, outcome
from twisted.internet.defer import CancelledError, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gateway.primitives.retry import RetryingCall, exponential_backoff

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")


# -- exponential_backoff -------------------------------------------------------------------


def test_backoff_without_jitter_grows_geometrically() -> None:
    """With rng=None the n-th delay is initial * factor**n."""
    delays = list(itertools.islice(exponential_backoff(1.0, 3.0, 1000.0, rng=None), 4))
    assert delays == [1.0, 3.0, 9.0, 27.0]


def test_backoff_is_capped_at_max_delay() -> None:
    """Delays never exceed max_delay once the geometric growth passes it."""
    delays = list(itertools.islice(exponential_backoff(1.0, 2.0, 5.0, rng=None), 5))
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_backoff_applies_full_jitter() -> None:
    """Each delay is rng() times the capped delay (full jitter)."""
    draws = iter([0.5, 0.25, 1.0])
    backoff = exponential_backoff(2.0, 2.0, 100.0, rng=lambda: next(draws))
    assert list(itertools.islice(backoff, 3)) == [1.0, 1.0, 8.0]


def test_backoff_default_jitter_stays_below_the_cap() -> None:
    """With the default random rng every delay lies in [0, cap)."""
    backoff = exponential_backoff(0.1, 2.0, 0.4)
    caps = [0.1, 0.2, 0.4, 0.4, 0.4]
    for cap, delay in zip(caps, itertools.islice(backoff, 5), strict=True):
        assert 0.0 <= delay < cap


def test_backoff_does_not_overflow_after_many_steps() -> None:
    """Thousands of delays in, the cap stays max_delay instead of overflowing."""
    delays = list(itertools.islice(exponential_backoff(1.0, 10.0, 7.0, rng=None), 5000))
    assert delays[-1] == 7.0


@pytest.mark.parametrize(
    "kwargs", [{"initial": -1.0}, {"max_delay": -1.0}, {"factor": 0.5}], ids=str
)
def test_backoff_rejects_bad_arguments_at_once(kwargs: dict[str, float]) -> None:
    """Invalid arguments raise ValueError when called, not when first iterated."""
    with pytest.raises(ValueError):
        exponential_backoff(**kwargs)


# -- RetryingCall ------------------------------------------------------------------------


def test_first_attempt_is_made_synchronously() -> None:
    """start() calls fn before returning."""
    backend = DeferredSource()
    RetryingCall(Clock(), backend).start(backoff=[1.0])
    assert len(backend.deferreds) == 1


def test_fn_receives_args_and_kwargs() -> None:
    """The positional and keyword arguments given to the constructor reach fn."""
    seen: list[tuple[Any, ...]] = []

    def fn(a: int, *, b: str) -> str:
        seen.append((a, b))
        return "ok"

    RetryingCall(Clock(), fn, 1, b="two").start()
    assert seen == [(1, "two")]


def test_success_fires_with_the_result() -> None:
    """A successful attempt fires the Deferred with fn's result."""
    backend = DeferredSource()
    d = RetryingCall(Clock(), backend).start(backoff=[1.0])
    backend.deferreds[0].callback("answer")
    assert outcome(d) == "answer"


def test_plain_return_value_is_a_success() -> None:
    """A fn returning a plain value (not a Deferred) succeeds at once."""
    d = RetryingCall(Clock(), lambda: 42).start()
    assert outcome(d) == 42


def test_retry_waits_for_the_backoff_delay() -> None:
    """After a failure the next attempt starts only when the backoff delay has passed."""
    clock = Clock()
    backend = DeferredSource()
    RetryingCall(clock, backend).start(backoff=[2.0])
    backend.deferreds[0].errback(ConnectionError("down"))
    clock.advance(1.9)
    assert len(backend.deferreds) == 1
    clock.advance(0.1)
    assert len(backend.deferreds) == 2


def test_success_after_failures_fires_with_the_result() -> None:
    """A success on a later attempt fires the Deferred with that result."""
    clock = Clock()
    backend = DeferredSource()
    d = RetryingCall(clock, backend).start(backoff=[1.0, 1.0])
    backend.deferreds[0].errback(ConnectionError("down"))
    clock.advance(1.0)
    backend.deferreds[1].callback("finally")
    assert outcome(d) == "finally"


def test_synchronous_raise_is_retried() -> None:
    """An exception raised by fn itself counts as a failed attempt and is retried."""
    clock = Clock()
    outcomes: Iterator[str | None] = iter([None, "ok"])

    def fn() -> str:
        outcome = next(outcomes)
        if outcome is None:
            raise ConnectionError("boom")
        return outcome

    d = RetryingCall(clock, fn).start(backoff=[0.0])
    clock.advance(0)
    assert outcome(d) == "ok"


def test_max_attempts_exhausted_fails_with_the_first_failure() -> None:
    """When max_attempts attempts have failed, the Deferred fails with the first failure."""
    clock = Clock()
    backend = DeferredSource()
    d = RetryingCall(clock, backend).start(backoff=itertools.repeat(1.0), max_attempts=3)
    for i in range(3):
        backend.deferreds[i].errback(ConnectionError(f"attempt {i}"))
        clock.advance(1.0)
    failure = failure_of(d)
    assert str(failure.value) == "attempt 0"
    assert len(backend.deferreds) == 3


def test_final_failure_carries_the_attempt_count() -> None:
    """The Failure the Deferred fails with has an `attempts` attribute."""
    clock = Clock()
    d = RetryingCall(clock, lambda: fail(ConnectionError("x"))).start(
        backoff=itertools.repeat(0.5), max_attempts=4
    )
    clock.pump([0.5] * 4)
    assert failure_of(d).attempts == 4


def test_retrying_call_counts_attempts() -> None:
    """RetryingCall.attempts is the number of attempts made so far."""
    clock = Clock()
    backend = DeferredSource()
    call: RetryingCall[str] = RetryingCall(clock, backend)
    call.start(backoff=[1.0, 1.0])
    backend.deferreds[0].errback(ConnectionError("down"))
    clock.advance(1.0)
    assert call.attempts == 2
    backend.deferreds[1].callback("ok")


def test_exhausted_backoff_fails_with_the_first_failure() -> None:
    """A finite backoff that runs out ends the retries with the first failure."""
    clock = Clock()
    errors = iter([KeyError("first"), OSError("second"), OSError("third")])
    d = RetryingCall(clock, lambda: fail(next(errors))).start(backoff=[1.0, 1.0])
    clock.pump([1.0, 1.0])
    failure = failure_of(d)
    assert failure.check(KeyError)
    assert failure.attempts == 3


def test_non_retryable_failure_fails_at_once() -> None:
    """A failure the tester rejects fails the Deferred at once with that failure."""
    clock = Clock()
    backend = DeferredSource()
    d = RetryingCall(clock, backend).start(
        backoff=itertools.repeat(1.0), failure_tester=lambda f: f.check(ConnectionError) is not None
    )
    backend.deferreds[0].errback(ValueError("bad request"))
    assert failure_of(d).check(ValueError)
    clock.advance(10)
    assert len(backend.deferreds) == 1


def test_non_retryable_failure_after_retries_is_reported_itself() -> None:
    """A non-retryable failure on a later attempt is what the Deferred fails with."""
    clock = Clock()
    errors = iter([ConnectionError("flaky"), ValueError("bad request")])
    d = RetryingCall(clock, lambda: fail(next(errors))).start(
        backoff=itertools.repeat(1.0), failure_tester=lambda f: f.check(ConnectionError) is not None
    )
    clock.advance(1.0)
    failure = failure_of(d)
    assert failure.check(ValueError)
    assert failure.attempts == 2


def test_failure_tester_that_raises_fails_the_call() -> None:
    """An exception from failure_tester fails the Deferred with that exception."""

    def tester(f: Failure) -> bool:
        raise RuntimeError("tester broke")

    d = RetryingCall(Clock(), lambda: fail(ConnectionError("x"))).start(
        backoff=[1.0], failure_tester=tester
    )
    assert failure_of(d).check(RuntimeError)


def test_default_backoff_is_exponential_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """With backoff=None the first retry waits rng() times exponential_backoff's first cap
    (0.1s): with random.random() pinned to 0.5 that is exactly 0.05s."""
    monkeypatch.setattr(random, "random", lambda: 0.5)
    clock = Clock()
    backend = DeferredSource()
    RetryingCall(clock, backend).start(max_attempts=2)
    backend.deferreds[0].errback(ConnectionError("down"))
    clock.advance(0.049)
    assert len(backend.deferreds) == 1
    clock.advance(0.001)
    assert len(backend.deferreds) == 2
    backend.deferreds[1].callback("ok")


def test_cancel_while_waiting_stops_further_attempts() -> None:
    """cancel() during a backoff wait means no further attempt is ever made."""
    clock = Clock()
    backend = DeferredSource()
    call: RetryingCall[str] = RetryingCall(clock, backend)
    d = call.start(backoff=itertools.repeat(1.0))
    backend.deferreds[0].errback(ConnectionError("down"))
    call.cancel()
    clock.advance(100)
    assert len(backend.deferreds) == 1
    assert failure_of(d).check(CancelledError)


def test_cancel_leaves_no_timer_behind() -> None:
    """cancel() during a backoff wait removes the pending delayed call from the clock."""
    clock = Clock()
    call: RetryingCall[str] = RetryingCall(clock, lambda: fail(ConnectionError("x")))
    d = call.start(backoff=[5.0])
    call.cancel()
    assert clock.getDelayedCalls() == []
    failure_of(d)


def test_cancel_cancels_the_attempt_underway() -> None:
    """cancel() while an attempt is underway cancels that attempt's Deferred."""
    backend = DeferredSource()
    call: RetryingCall[str] = RetryingCall(Clock(), backend)
    d = call.start(backoff=itertools.repeat(1.0))
    call.cancel()
    assert backend.cancelled == [0]
    assert failure_of(d).check(CancelledError)


def test_cancelling_the_deferred_cancels_the_attempt_underway() -> None:
    """Cancelling the returned Deferred cancels the attempt underway, like cancel()."""
    backend = DeferredSource()
    d = RetryingCall(Clock(), backend).start(backoff=itertools.repeat(1.0))
    d.cancel()
    assert backend.cancelled == [0]
    assert failure_of(d).check(CancelledError)


def test_cancelling_the_deferred_stops_further_attempts() -> None:
    """Cancelling the returned Deferred during a backoff wait prevents any further attempt."""
    clock = Clock()
    backend = DeferredSource()
    d = RetryingCall(clock, backend).start(backoff=itertools.repeat(1.0))
    backend.deferreds[0].errback(ConnectionError("down"))
    d.cancel()
    clock.advance(100)
    assert len(backend.deferreds) == 1
    failure_of(d)


def test_cancel_after_success_is_a_no_op() -> None:
    """cancel() once the outcome is known changes nothing."""
    call: RetryingCall[str] = RetryingCall(Clock(), lambda: succeed("done"))
    d = call.start()
    call.cancel()
    assert outcome(d) == "done"


def test_start_twice_is_refused() -> None:
    """A RetryingCall is single-use: a second start() raises RuntimeError."""
    call: RetryingCall[int] = RetryingCall(Clock(), lambda: 1)
    call.start()
    with pytest.raises(RuntimeError):
        call.start()


def test_max_attempts_below_one_is_refused() -> None:
    """max_attempts=0 raises ValueError instead of never calling fn."""
    with pytest.raises(ValueError):
        RetryingCall(Clock(), lambda: 1).start(max_attempts=0)
