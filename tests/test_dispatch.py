"""DispatchQueue: width, priority, cancellation, pause/resume, stop and capacity."""

from __future__ import annotations

from typing import Any

import pytest
from deferred_helpers import outcome
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from gateway.primitives.dispatch import DispatchQueue, QueueFull, QueueStopped

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")


class Worker:
    """A job function whose calls return Deferreds the test fires by job name."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.running: dict[str, Deferred[str]] = {}
        self.cancelled: list[str] = []

    def __call__(self, job: str) -> Deferred[str]:
        self.started.append(job)
        d: Deferred[str] = Deferred(lambda _: self.cancelled.append(job))
        self.running[job] = d
        return d

    def finish(self, job: str, result: str | None = None) -> None:
        self.running.pop(job).callback(result if result is not None else f"done {job}")


def fired(d: Deferred[Any]) -> bool:
    """Whether d has fired yet."""
    return d.called


def test_job_starts_at_once_when_there_is_room() -> None:
    """put() calls fn synchronously while fewer than width jobs are underway."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=2)
    q.put("a")
    assert worker.started == ["a"]


def test_put_deferred_fires_with_fn_result() -> None:
    """The put() Deferred fires with the result of fn's Deferred."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    d = q.put("a")
    worker.finish("a", "result a")
    assert outcome(d) == "result a"


def test_fn_may_return_a_plain_value() -> None:
    """A fn returning a plain value fires the put() Deferred with it."""
    q: DispatchQueue[int, int] = DispatchQueue(lambda n: n * 2, width=1)
    assert outcome(q.put(21)) == 42


def test_fn_raising_fails_the_put_deferred() -> None:
    """An exception raised by fn fails that job's put() Deferred with it."""

    def fn(job: str) -> str:
        raise KeyError(job)

    q: DispatchQueue[str, str] = DispatchQueue(fn, width=1)
    assert outcome(q.put("a")).check(KeyError)


def test_fn_failing_does_not_stop_the_queue() -> None:
    """After a job fails the next pending job still starts."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    d = q.put("a")
    q.put("b")
    worker.running.pop("a").errback(OSError("boom"))
    outcome(d)
    assert worker.started == ["a", "b"]


def test_no_more_than_width_jobs_are_underway() -> None:
    """Jobs beyond width wait in the queue."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=2)
    for job in "abcd":
        q.put(job)
    assert q.underway() == ["a", "b"]
    assert q.pending() == ["c", "d"]


def test_finishing_a_job_starts_the_next() -> None:
    """When an underway job finishes, the next pending job starts."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    q.put("a")
    q.put("b")
    worker.finish("a")
    assert q.underway() == ["b"]


def test_lower_priority_value_runs_first() -> None:
    """A pending job with a lower priority value starts before one with a higher value."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    q.put("busy")
    q.put("low", priority=5)
    q.put("urgent", priority=-1)
    q.put("normal", priority=0)
    assert q.pending() == ["urgent", "normal", "low"]
    for job in ["busy", "urgent", "normal"]:
        worker.finish(job)
    assert worker.started == ["busy", "urgent", "normal", "low"]


def test_equal_priorities_run_in_put_order() -> None:
    """Jobs of the same priority start first-in, first-out."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    for job in ["a", "b", "c", "d"]:
        q.put(job, priority=3)
    for job in ["a", "b", "c"]:
        worker.finish(job)
    assert worker.started == ["a", "b", "c", "d"]


def test_raising_width_starts_pending_jobs_at_once() -> None:
    """Setting a larger width starts waiting jobs immediately."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    for job in "abcd":
        q.put(job)
    q.width = 3
    assert q.underway() == ["a", "b", "c"]


def test_lowering_width_does_not_interrupt_underway_jobs() -> None:
    """Setting a smaller width leaves every underway job running."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=3)
    for job in "abc":
        q.put(job)
    q.width = 1
    assert q.underway() == ["a", "b", "c"]
    assert worker.cancelled == []


def test_lowered_width_starts_nothing_until_below_it() -> None:
    """After lowering the width, pending jobs wait until the underway count drops below it."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=3)
    for job in "abcd":
        q.put(job)
    q.width = 1
    worker.finish("a")
    worker.finish("b")
    assert worker.started == ["a", "b", "c"]
    worker.finish("c")
    assert q.underway() == ["d"]


def test_width_zero_holds_every_job() -> None:
    """A width of 0 queues jobs without starting any."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=0)
    q.put("a")
    assert worker.started == []
    assert q.pending() == ["a"]


@pytest.mark.parametrize("width", [-1, 1.5, True], ids=repr)
def test_invalid_width_is_refused(width: Any) -> None:
    """A width that is not an int >= 0 raises ValueError."""
    with pytest.raises(ValueError):
        DispatchQueue(Worker(), width=width)


def test_cancelling_a_pending_job_fails_it_with_cancelled_error() -> None:
    """Cancelling a pending job's put() Deferred fails it with CancelledError."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    q.put("a")
    d = q.put("b")
    d.cancel()
    assert outcome(d).check(CancelledError)


def test_cancelled_pending_job_never_runs() -> None:
    """A job cancelled while pending leaves the queue and fn is never called with it."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    q.put("a")
    q.put("b").addErrback(lambda f: None).cancel()
    assert q.pending() == []
    worker.finish("a")
    assert worker.started == ["a"]


def test_cancelling_a_pending_job_leaves_the_others() -> None:
    """Cancelling one pending job removes only that job."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    q.put("a")
    q.put("b")
    q.put("c").addErrback(lambda f: None).cancel()
    q.put("d")
    assert q.pending() == ["b", "d"]


def test_mass_cancellation_compacts_the_heap() -> None:
    """Cancelled pending jobs do not pile up in the heap; pending() keeps its order."""
    q: DispatchQueue[str, str] = DispatchQueue(Worker(), width=0)
    puts = [q.put(f"j{i}", priority=i % 3) for i in range(100)]
    for i, d in enumerate(puts):
        if i % 10:
            d.addErrback(lambda f: f.trap(CancelledError))
            d.cancel()
    assert len(q._heap) <= 2 * 10 + 16
    kept = sorted(range(0, 100, 10), key=lambda i: (i % 3, i))
    assert q.pending() == [f"j{i}" for i in kept]


def test_cancelling_an_underway_job_cancels_fns_deferred() -> None:
    """Cancelling an underway job's put() Deferred cancels the Deferred fn returned."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    d = q.put("a")
    d.cancel()
    assert worker.cancelled == ["a"]
    assert outcome(d).check(CancelledError)


def test_cancelling_an_underway_job_frees_its_slot() -> None:
    """Once a cancelled underway job's Deferred has fired, the next job starts."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    q.put("a").addErrback(lambda f: None).cancel()
    q.put("b")
    assert q.underway() == ["b"]


def test_underway_lists_jobs_in_start_order() -> None:
    """underway() lists the running jobs in the order they started."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=3)
    for job in "abc":
        q.put(job)
    worker.finish("b")
    q.put("d")
    assert q.underway() == ["a", "c", "d"]


def test_pause_stops_new_jobs_starting() -> None:
    """While paused no pending job starts, even when slots free up."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    q.put("a")
    q.pause()
    q.put("b")
    worker.finish("a")
    assert worker.started == ["a"]
    assert q.pending() == ["b"]


def test_pause_leaves_underway_jobs_running() -> None:
    """pause() does not cancel or interrupt underway jobs."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    d = q.put("a")
    q.pause()
    worker.finish("a")
    assert outcome(d) == "done a"


def test_resume_starts_pending_jobs_up_to_width() -> None:
    """resume() starts waiting jobs at once, up to the width."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=2)
    q.pause()
    for job in "abc":
        q.put(job)
    q.resume()
    assert q.underway() == ["a", "b"]


def test_stop_waits_for_underway_jobs() -> None:
    """stop()'s Deferred fires only after every underway job has finished."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=2)
    q.put("a")
    q.put("b")
    stopped = q.stop()
    worker.finish("a")
    assert not fired(stopped)
    worker.finish("b")
    assert outcome(stopped) == []


def test_stop_returns_the_jobs_that_never_started() -> None:
    """stop() fires with the pending jobs, in the order they would have started."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    q.put("a")
    pending = [q.put("b", priority=2), q.put("c", priority=1)]
    stopped = q.stop()
    worker.finish("a")
    assert outcome(stopped) == ["c", "b"]
    for d in pending:
        outcome(d)


def test_stop_fails_pending_puts_with_queue_stopped() -> None:
    """The put() Deferreds of jobs that never started fail with QueueStopped."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    q.put("a")
    d = q.put("b")
    q.stop()
    assert outcome(d).check(QueueStopped)
    worker.finish("a")


def test_stop_lets_underway_jobs_deliver_their_results() -> None:
    """An underway job's put() Deferred still fires with its result after stop()."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    d = q.put("a")
    q.stop()
    worker.finish("a")
    assert outcome(d) == "done a"


def test_stop_with_nothing_underway_fires_at_once() -> None:
    """stop() on an idle queue returns an already-fired Deferred."""
    q: DispatchQueue[str, str] = DispatchQueue(Worker(), width=1)
    assert outcome(q.stop()) == []


def test_put_after_stop_raises() -> None:
    """put() on a stopped queue raises QueueStopped synchronously."""
    q: DispatchQueue[str, str] = DispatchQueue(Worker(), width=1)
    q.stop()
    with pytest.raises(QueueStopped):
        q.put("late")


def test_second_stop_reports_the_same_jobs() -> None:
    """Calling stop() again gives another Deferred with the same never-started jobs."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    q.put("a")
    q.put("b").addErrback(lambda f: None)
    first, second = q.stop(), q.stop()
    worker.finish("a")
    assert outcome(first) == outcome(second) == ["b"]


def test_put_beyond_capacity_raises_queue_full() -> None:
    """put() raises QueueFull synchronously when capacity jobs are already waiting."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1, capacity=2)
    q.put("a")
    q.put("b")
    q.put("c")
    with pytest.raises(QueueFull):
        q.put("d")


def test_capacity_does_not_count_underway_jobs() -> None:
    """A job that can start at once is accepted even with capacity 0."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1, capacity=0)
    q.put("a")
    assert worker.started == ["a"]
    with pytest.raises(QueueFull):
        q.put("b")


def test_cancelling_a_pending_job_frees_capacity() -> None:
    """A pending job cancelled makes room for another put()."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1, capacity=1)
    q.put("a")
    q.put("b").addErrback(lambda f: None).cancel()
    q.put("c")
    assert q.pending() == ["c"]


def test_negative_capacity_is_refused() -> None:
    """A negative capacity raises ValueError."""
    with pytest.raises(ValueError):
        DispatchQueue(Worker(), width=1, capacity=-1)


def test_many_synchronous_jobs_do_not_recurse() -> None:
    """Thousands of jobs finishing synchronously are dispatched without deep recursion."""
    q: DispatchQueue[int, int] = DispatchQueue(lambda n: n, width=0)
    results = [q.put(n) for n in range(5000)]
    q.width = 1
    assert [outcome(d) for d in results] == list(range(5000))


def test_callback_put_during_finish_keeps_priority_order() -> None:
    """A job put from a put() callback waits behind jobs already queued at the same priority."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    late: list[Deferred[str]] = []
    q.put("a").addCallback(lambda _: late.append(q.put("late")))
    q.put("b")
    worker.finish("a")
    assert q.underway() == ["b"]
    assert q.pending() == ["late"]


def test_failure_from_fn_is_passed_on_not_logged() -> None:
    """A failing job's Failure reaches its put() Deferred and nowhere else."""
    worker = Worker()
    q: DispatchQueue[str, str] = DispatchQueue(worker, width=1)
    d = q.put("a")
    worker.running.pop("a").errback(OSError("boom"))
    result = outcome(d)
    assert isinstance(result, Failure) and result.check(OSError)
