"""first_success: parallel and staggered (hedged) attempts, driven by a fake Clock."""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest
from deferred_helpers import outcome
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import Clock

from gateway.primitives.race import AllAttemptsFailed, first_success

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")


class Replicas:
    """n attempt callables; each call returns a Deferred the test fires by index."""

    def __init__(self, n: int) -> None:
        self.deferreds: dict[int, Deferred[str]] = {}
        self.cancelled: list[int] = []
        self.callables = [self._make(i) for i in range(n)]

    def _make(self, i: int) -> Callable[[], Deferred[str]]:
        def attempt() -> Deferred[str]:
            d: Deferred[str] = Deferred(lambda _: self.cancelled.append(i))
            self.deferreds[i] = d
            return d

        return attempt

    @property
    def started(self) -> list[int]:
        return sorted(self.deferreds)


# -- all at once ---------------------------------------------------------------------------


def test_without_stagger_every_attempt_starts_at_once() -> None:
    """stagger=None calls every callable before returning."""
    replicas = Replicas(3)
    first_success(replicas.callables).addErrback(lambda f: None).cancel()
    assert replicas.started == [0, 1, 2]


def test_first_success_wins() -> None:
    """The Deferred fires with the first successful result."""
    replicas = Replicas(3)
    d = first_success(replicas.callables)
    replicas.deferreds[2].callback("from 2")
    assert outcome(d) == "from 2"


def test_failures_before_a_success_are_ignored() -> None:
    """Attempts failing before another succeeds do not fail the Deferred."""
    replicas = Replicas(2)
    d = first_success(replicas.callables)
    replicas.deferreds[0].errback(ConnectionError("down"))
    replicas.deferreds[1].callback("from 1")
    assert outcome(d) == "from 1"


def test_winner_cancels_the_other_attempts() -> None:
    """Once one attempt succeeds every other running attempt is cancelled."""
    replicas = Replicas(3)
    first_success(replicas.callables)
    replicas.deferreds[1].callback("from 1")
    assert sorted(replicas.cancelled) == [0, 2]


def test_losers_cancellation_is_not_logged() -> None:
    """The CancelledErrors of cancelled losers are consumed, not logged as unhandled."""
    replicas = Replicas(3)
    first_success(replicas.callables)
    replicas.deferreds[0].callback("from 0")
    del replicas
    gc.collect()  # the no_unhandled_deferred_errors fixture fails the test if one is logged


def test_all_failing_gives_all_attempts_failed() -> None:
    """When every attempt fails the Deferred fails with AllAttemptsFailed."""
    replicas = Replicas(2)
    d = first_success(replicas.callables)
    replicas.deferreds[1].errback(ConnectionError("b"))
    replicas.deferreds[0].errback(TimeoutError("a"))
    assert outcome(d).check(AllAttemptsFailed)


def test_all_attempts_failed_lists_failures_in_start_order() -> None:
    """AllAttemptsFailed.failures holds each attempt's Failure in start order."""
    replicas = Replicas(3)
    d = first_success(replicas.callables)
    for i in [2, 0, 1]:
        replicas.deferreds[i].errback(ValueError(f"replica {i}"))
    error = outcome(d).value
    assert [str(f.value) for f in error.failures] == ["replica 0", "replica 1", "replica 2"]


def test_synchronous_success_skips_later_callables() -> None:
    """A callable that succeeds synchronously means later ones are never called."""
    replicas = Replicas(2)
    d = first_success([lambda: "cached", *replicas.callables])
    assert outcome(d) == "cached"
    assert replicas.started == []


def test_synchronous_raise_counts_as_a_failure() -> None:
    """A callable that raises is a failed attempt, and the others still run."""

    def broken() -> str:
        raise OSError("no cache")

    replicas = Replicas(1)
    d = first_success([broken, *replicas.callables])
    replicas.deferreds[0].callback("from backend")
    assert outcome(d) == "from backend"


def test_no_callables_fails_with_all_attempts_failed() -> None:
    """An empty sequence fails at once with AllAttemptsFailed carrying no failures."""
    failure = outcome(first_success([]))
    assert failure.check(AllAttemptsFailed)
    assert failure.value.failures == []


def test_cancelling_the_result_cancels_every_attempt() -> None:
    """Cancelling the returned Deferred cancels all running attempts."""
    replicas = Replicas(3)
    d = first_success(replicas.callables)
    d.cancel()
    assert sorted(replicas.cancelled) == [0, 1, 2]
    assert outcome(d).check(CancelledError)


# -- staggered (hedged) --------------------------------------------------------------------


def test_stagger_without_clock_is_refused() -> None:
    """Passing stagger without a clock raises ValueError."""
    with pytest.raises(ValueError):
        first_success(Replicas(2).callables, stagger=1.0)


def test_negative_stagger_is_refused() -> None:
    """A negative stagger raises ValueError."""
    with pytest.raises(ValueError):
        first_success(Replicas(2).callables, stagger=-1.0, clock=Clock())


def test_stagger_starts_only_the_first_attempt() -> None:
    """With a stagger only the first callable is called at once."""
    replicas = Replicas(3)
    d = first_success(replicas.callables, stagger=0.5, clock=Clock())
    assert replicas.started == [0]
    d.addErrback(lambda f: None).cancel()


def test_stagger_starts_the_next_attempt_after_the_delay() -> None:
    """Without a success after stagger seconds, the next attempt starts."""
    clock = Clock()
    replicas = Replicas(3)
    d = first_success(replicas.callables, stagger=0.5, clock=clock)
    clock.advance(0.49)
    assert replicas.started == [0]
    clock.advance(0.01)
    assert replicas.started == [0, 1]
    clock.advance(0.5)
    assert replicas.started == [0, 1, 2]
    d.addErrback(lambda f: None).cancel()


def test_stagger_success_prevents_further_attempts() -> None:
    """A success within the stagger means no further attempt ever starts."""
    clock = Clock()
    replicas = Replicas(3)
    d = first_success(replicas.callables, stagger=0.5, clock=clock)
    replicas.deferreds[0].callback("fast")
    clock.advance(10)
    assert replicas.started == [0]
    assert outcome(d) == "fast"


def test_stagger_success_leaves_no_timer() -> None:
    """After a success the stagger timer is removed from the clock."""
    clock = Clock()
    replicas = Replicas(3)
    first_success(replicas.callables, stagger=0.5, clock=clock)
    replicas.deferreds[0].callback("fast")
    assert clock.getDelayedCalls() == []


def test_hedged_winner_cancels_the_slow_attempt() -> None:
    """When a later hedged attempt wins, the earlier slow one is cancelled."""
    clock = Clock()
    replicas = Replicas(2)
    d = first_success(replicas.callables, stagger=0.5, clock=clock)
    clock.advance(0.5)
    replicas.deferreds[1].callback("hedge")
    assert replicas.cancelled == [0]
    assert outcome(d) == "hedge"


def test_stagger_failure_of_all_running_starts_next_at_once() -> None:
    """When every running attempt has failed, the next starts without waiting out the stagger."""
    clock = Clock()
    replicas = Replicas(3)
    d = first_success(replicas.callables, stagger=5.0, clock=clock)
    replicas.deferreds[0].errback(ConnectionError("down"))
    assert replicas.started == [0, 1]
    d.addErrback(lambda f: None).cancel()


def test_stagger_restarts_the_timer_after_an_early_start() -> None:
    """An attempt started early because of failures gets a full stagger before the next."""
    clock = Clock()
    replicas = Replicas(3)
    d = first_success(replicas.callables, stagger=5.0, clock=clock)
    clock.advance(4.0)
    replicas.deferreds[0].errback(ConnectionError("down"))
    clock.advance(4.0)
    assert replicas.started == [0, 1]
    clock.advance(1.0)
    assert replicas.started == [0, 1, 2]
    d.addErrback(lambda f: None).cancel()


def test_stagger_failure_with_others_running_waits_for_the_timer() -> None:
    """A failure while another attempt still runs does not start the next one early."""
    clock = Clock()
    replicas = Replicas(3)
    d = first_success(replicas.callables, stagger=1.0, clock=clock)
    clock.advance(1.0)
    replicas.deferreds[0].errback(ConnectionError("down"))
    assert replicas.started == [0, 1]
    d.addErrback(lambda f: None).cancel()


def test_stagger_synchronous_failures_start_the_next_at_once() -> None:
    """Callables that fail synchronously are passed over at once, with no clock advance."""
    clock = Clock()
    replicas = Replicas(1)
    d = first_success(
        [lambda: fail(OSError("a")), lambda: fail(OSError("b")), *replicas.callables],
        stagger=1.0,
        clock=clock,
    )
    assert replicas.started == [0]
    replicas.deferreds[0].callback("third")
    assert outcome(d) == "third"


def test_stagger_all_failing_gives_all_attempts_failed() -> None:
    """With a stagger, every attempt failing fails the Deferred with each failure in order."""
    clock = Clock()
    replicas = Replicas(3)
    d = first_success(replicas.callables, stagger=1.0, clock=clock)
    for i in range(3):
        replicas.deferreds[i].errback(ValueError(str(i)))
    error = outcome(d).value
    assert isinstance(error, AllAttemptsFailed)
    assert [str(f.value) for f in error.failures] == ["0", "1", "2"]


def test_cancelling_the_result_cancels_running_hedges() -> None:
    """Cancelling the returned Deferred cancels every running staggered attempt."""
    clock = Clock()
    replicas = Replicas(3)
    d = first_success(replicas.callables, stagger=1.0, clock=clock)
    clock.advance(1.0)
    d.cancel()
    assert sorted(replicas.cancelled) == [0, 1]
    assert outcome(d).check(CancelledError)


def test_cancelling_the_result_cancels_the_pending_timer() -> None:
    """Cancelling the returned Deferred removes the stagger timer, so nothing starts later."""
    clock = Clock()
    replicas = Replicas(3)
    d = first_success(replicas.callables, stagger=1.0, clock=clock)
    d.cancel()
    outcome(d)
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert replicas.started == [0]
