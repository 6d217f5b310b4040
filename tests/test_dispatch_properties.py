"""Property test: random operation sequences against DispatchQueue and a simple model."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.defer import Deferred

from gateway.primitives.dispatch import DispatchQueue

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")


class DispatchMachine(RuleBasedStateMachine):
    """Drives a DispatchQueue and checks it against a model of pending/underway jobs."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: DispatchQueue[int, str] = DispatchQueue(self.fn, width=2)
        self.next_job = 0
        # Model: pending job -> (priority, put sequence); underway job -> fn's Deferred.
        self.pending: dict[int, tuple[int, int]] = {}
        self.underway: dict[int, Deferred[str]] = {}
        self.puts: dict[int, Deferred[str]] = {}
        self.fire_counts: dict[int, int] = {}
        self.paused = False
        self.last_underway_count = 0

    # The job function: every start is checked against the model as it happens.
    def fn(self, job: int) -> Deferred[str]:
        # The queue counts the job as underway before calling fn, so this is "it had room".
        assert len(self.queue.underway()) <= self.queue.width
        assert not self.paused
        assert self.pending[job] == min(self.pending.values()), "priority/FIFO order broken"
        del self.pending[job]
        d: Deferred[str] = Deferred()
        self.underway[job] = d
        # Added before the queue's own callback, so the model is updated first.
        d.addBoth(self._fn_fired, job)
        return d

    def _fn_fired(self, result: object, job: int) -> object:
        del self.underway[job]
        return result

    def _put_fired(self, result: object, job: int) -> None:
        self.fire_counts[job] += 1

    @rule(priority=st.integers(min_value=-2, max_value=2))
    def put(self, priority: int) -> None:
        job = self.next_job
        self.next_job += 1
        self.pending[job] = (priority, job)
        self.fire_counts[job] = 0
        d = self.queue.put(job, priority=priority)
        # Returning None consumes failures (CancelledError, job failures) as well as results.
        d.addBoth(self._put_fired, job)
        self.puts[job] = d

    @rule(width=st.integers(min_value=0, max_value=5))
    def resize(self, width: int) -> None:
        self.queue.width = width

    @precondition(lambda self: any(c == 0 for c in self.fire_counts.values()))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        unfired = sorted(job for job, count in self.fire_counts.items() if count == 0)
        job = data.draw(st.sampled_from(unfired))
        self.pending.pop(job, None)
        self.puts[job].cancel()
        assert self.fire_counts[job] == 1
        assert job not in self.underway

    @precondition(lambda self: bool(self.underway))
    @rule(data=st.data(), succeed=st.booleans())
    def finish(self, data: st.DataObject, succeed: bool) -> None:
        job = data.draw(st.sampled_from(sorted(self.underway)))
        d = self.underway[job]
        if succeed:
            d.callback(f"done {job}")
        else:
            d.errback(RuntimeError(f"job {job} failed"))
        assert self.fire_counts[job] == 1

    @rule()
    def pause(self) -> None:
        self.paused = True
        self.queue.pause()

    @rule()
    def resume(self) -> None:
        self.paused = False
        self.queue.resume()

    @invariant()
    def underway_respects_width(self) -> None:
        # Above the width is only possible right after lowering it, and then the count
        # may only stay put or fall until it is back under the width.
        count = len(self.queue.underway())
        assert count <= self.queue.width or count <= self.last_underway_count
        self.last_underway_count = count

    @invariant()
    def queue_matches_model(self) -> None:
        assert sorted(self.queue.underway()) == sorted(self.underway)
        assert self.queue.pending() == sorted(self.pending, key=self.pending.__getitem__)

    @invariant()
    def queue_is_work_conserving(self) -> None:
        if not self.paused and len(self.underway) < self.queue.width:
            assert not self.pending

    @invariant()
    def every_put_fires_at_most_once_and_only_when_done(self) -> None:
        for job, count in self.fire_counts.items():
            in_queue = job in self.pending or job in self.underway
            assert count == (0 if in_queue else 1)

    def teardown(self) -> None:
        never_started = self.queue.pending()
        stopped = self.queue.stop()
        stop_results: list[object] = []
        stopped.addBoth(stop_results.append)
        self.pending.clear()
        for job in sorted(self.underway):
            assert stop_results == []
            self.underway[job].callback("done")
        assert stop_results == [never_started]
        assert all(count == 1 for count in self.fire_counts.values())


def test_dispatch_queue_random_operations() -> None:
    """Random put/resize/cancel/finish/pause/resume sequences keep every DispatchQueue invariant."""
    run_state_machine_as_test(
        DispatchMachine,
        settings=settings(max_examples=300, stateful_step_count=60, deadline=None),
    )
