"""A resizable, prioritised dispatch queue: at most ``width`` jobs underway at once.

Jobs are handed to a single function ``fn(job)``; each ``put()`` gets its own Deferred for
that job's outcome. The width can change at any time, processing can be paused, and
``stop()`` shuts down cleanly, handing back the jobs that never started.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure

J = TypeVar("J")
T = TypeVar("T")


class QueueFull(Exception):
    """``put()`` was refused because ``capacity`` jobs are already waiting."""


class QueueStopped(Exception):
    """The queue was stopped: no new jobs, and pending jobs will never run."""


class _State(enum.Enum):
    PENDING = "pending"
    UNDERWAY = "underway"
    DONE = "done"  # finished, cancelled while pending, or dropped by stop()


# The states as globals for the per-job code: on Python 3.11 every `_State.X` lookup goes
# through an enum descriptor (~0.1 µs), several per job; a global costs ~10x less.
_PENDING = _State.PENDING
_UNDERWAY = _State.UNDERWAY
_DONE = _State.DONE


@dataclass(eq=False, slots=True)  # one per job: slots make it cheaper to build
class _Entry(Generic[J, T]):
    job: J
    deferred: Deferred[T] = field(repr=False)
    state: _State = _PENDING
    fn_deferred: Deferred[T] | None = field(default=None, repr=False)


class DispatchQueue(Generic[J, T]):
    """Run ``fn(job)`` for queued jobs, at most ``width`` at a time.

    Lower ``priority`` values run first; jobs of equal priority run in ``put()`` order.
    ``fn`` may return a value, return a Deferred, or raise; the ``put()`` Deferred fires
    with the same outcome.

    Cancelling a ``put()`` Deferred of a pending job removes just that job from the queue
    (it fails with ``CancelledError``); for an underway job it cancels ``fn``'s Deferred. A
    job counts as underway until ``fn``'s Deferred actually fires, so a cancel that ``fn``
    ignores does not free a slot early.

    ``capacity`` bounds the number of *waiting* jobs: a ``put()`` that would have to wait
    while ``capacity`` jobs already wait raises :class:`QueueFull` synchronously. A job that
    can start at once never waits, so it is accepted even with ``capacity=0``.
    """

    def __init__(self, fn: Callable[[J], Deferred[T] | T], width: int, capacity: int | None = None):
        if capacity is not None and capacity < 0:
            raise ValueError(f"capacity must be >= 0 or None, got {capacity!r}")
        self._fn = fn
        self._width = _check_width(width)
        self._capacity = capacity
        # Heap of (priority, sequence, entry). The unique sequence number gives FIFO order
        # within a priority and means entries themselves are never compared.
        self._heap: list[tuple[int, int, _Entry[J, T]]] = []
        self._counter = itertools.count()
        # Cancelled pending entries stay in the heap (state DONE) until popped or compacted;
        # _pending_count counts only live ones.
        self._pending_count = 0
        self._underway: dict[_Entry[J, T], None] = {}  # insertion-ordered set: start order
        self._paused = False
        self._stopped = False
        self._never_started: list[J] = []
        self._stop_waiters: list[Deferred[list[J]]] = []
        self._dispatching = False

    # -- public API -------------------------------------------------------------------

    @property
    def width(self) -> int:
        """The maximum number of jobs underway at once."""
        return self._width

    @width.setter
    def width(self, width: int) -> None:
        # Lowering takes effect as underway jobs finish (none is interrupted); raising starts
        # pending jobs right now.
        self._width = _check_width(width)
        self._dispatch()

    def put(self, job: J, priority: int = 0) -> Deferred[T]:
        """Queue ``job``; the Deferred fires with ``fn(job)``'s outcome.

        Raises :class:`QueueStopped` after ``stop()`` and :class:`QueueFull` when the job
        would have to wait and ``capacity`` jobs are already waiting.
        """
        if self._stopped:
            raise QueueStopped("queue is stopped")
        if (
            self._capacity is not None
            and self._pending_count >= self._capacity
            and not self._can_start()
        ):
            raise QueueFull(f"{self._pending_count} jobs already waiting (capacity)")
        entry: _Entry[J, T] = _Entry(job, Deferred(lambda _: self._cancel(entry)))
        d = entry.deferred
        if not self._pending_count and not self._dispatching and self._can_start():
            # Nothing waits and a slot is free (the common case under the width): the job
            # would be pushed and popped straight back, so it starts without the heap.
            self._dispatch(entry)
            return d
        heapq.heappush(self._heap, (priority, next(self._counter), entry))
        self._pending_count += 1
        self._dispatch()
        return d

    def pending(self) -> list[J]:
        """The jobs waiting to start, in the order they would start."""
        return [e.job for _, _, e in sorted(self._heap) if e.state is _PENDING]

    def underway(self) -> list[J]:
        """The jobs started and not yet finished, in start order."""
        return [e.job for e in self._underway]

    def pause(self) -> None:
        """Start no more jobs until ``resume()``; underway jobs carry on."""
        self._paused = True

    def resume(self) -> None:
        """Undo ``pause()``: start pending jobs up to the width at once."""
        self._paused = False
        self._dispatch()

    def stop(self) -> Deferred[list[J]]:
        """Refuse new jobs, drop the pending ones, and fire once underway jobs have finished.

        The Deferred fires with the jobs that never started, in the order they would have
        started; their ``put()`` Deferreds fail with :class:`QueueStopped`. Calling ``stop()``
        again returns another Deferred with the same list.
        """
        if not self._stopped:
            self._stopped = True
            dropped = [e for _, _, e in sorted(self._heap) if e.state is _PENDING]
            self._heap.clear()
            self._pending_count = 0
            self._never_started = [e.job for e in dropped]
            # Mark everything first, fire afterwards: a callback on one of these Deferreds
            # may look at the queue and must see it already stopped and empty.
            for e in dropped:
                e.state = _DONE
            for e in dropped:
                e.deferred.errback(QueueStopped("queue stopped before the job started"))
        if not self._underway:
            return succeed(list(self._never_started))
        waiter: Deferred[list[J]] = Deferred(lambda w: self._stop_waiters.remove(w))
        self._stop_waiters.append(waiter)
        return waiter

    # -- internals ----------------------------------------------------------------------

    def _can_start(self) -> bool:
        return not self._paused and len(self._underway) < self._width

    def _dispatch(self, first: _Entry[J, T] | None = None) -> None:
        # fn may finish synchronously, and its completion (or a user callback on a put()
        # Deferred) calls back in here. Re-entrant calls return at once: the outer loop
        # re-checks every condition on each turn, so nothing is missed and the stack stays
        # flat however many jobs finish synchronously. ``first`` (never queued) starts
        # before the loop; put() only passes it when not dispatching already.
        if self._dispatching:
            return
        self._dispatching = True
        try:
            if first is not None:
                self._start(first)
            while self._can_start() and self._pending_count:
                _, _, entry = heapq.heappop(self._heap)
                if entry.state is _PENDING:
                    self._pending_count -= 1
                    self._start(entry)
        finally:
            self._dispatching = False

    def _start(self, entry: _Entry[J, T]) -> None:
        entry.state = _UNDERWAY
        self._underway[entry] = None
        # maybeDeferred takes plain values and Deferreds alike, but its overloads cannot
        # express a callable returning the union, hence the cast.
        d = maybeDeferred(cast("Callable[[J], Deferred[T]]", self._fn), entry.job)
        entry.fn_deferred = d
        d.addBoth(self._finished, entry)

    def _finished(self, result: T | Failure, entry: _Entry[J, T]) -> None:
        # Returning None hands the outcome over to the put() Deferred and leaves fn's own
        # Deferred clean (no "Unhandled error in Deferred" for a failure we passed on).
        del self._underway[entry]
        entry.state = _DONE
        entry.fn_deferred = None
        # The put() Deferred may already have fired: cancelled while fn's Deferred ignored
        # the cancel. The slot is freed only now, when fn has really finished.
        if not entry.deferred.called:
            if isinstance(result, Failure):
                entry.deferred.errback(result)
            else:
                entry.deferred.callback(result)
        self._dispatch()
        if self._stopped and not self._underway:
            waiters, self._stop_waiters = self._stop_waiters, []
            for w in waiters:
                w.callback(list(self._never_started))

    def _cancel(self, entry: _Entry[J, T]) -> None:
        if entry.state is _PENDING:
            # Deferred.cancel() errbacks it with CancelledError once we return.
            entry.state = _DONE
            self._pending_count -= 1
            self._compact()
        elif entry.state is _UNDERWAY and entry.fn_deferred is not None:
            entry.fn_deferred.cancel()

    def _compact(self) -> None:
        # Cancelled entries are left in the heap (removal from the middle is O(n)); rebuild
        # once they are the majority so mass cancellation cannot grow the heap unboundedly.
        if len(self._heap) > 2 * self._pending_count + 16:
            self._heap = [item for item in self._heap if item[2].state is _PENDING]
            heapq.heapify(self._heap)


def _check_width(width: Any) -> int:
    if not isinstance(width, int) or isinstance(width, bool) or width < 0:
        raise ValueError(f"width must be an int >= 0, got {width!r}")
    return width
