"""First answer wins: run alternative ways of getting a result, keep the first success.

With a ``stagger`` this is a hedged request: ask one backend, and only if it has not
answered within ``stagger`` seconds ask the next as well, and so on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar, cast

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.reactors import DelayedCall, as_clock

T = TypeVar("T")


class AllAttemptsFailed(Exception):
    """Every attempt failed; ``failures`` holds their Failures in start order."""

    def __init__(self, failures: list[Failure]) -> None:
        self.failures = failures
        detail = "; ".join(repr(f.value) for f in failures)
        super().__init__(f"all {len(failures)} attempts failed" + (f": {detail}" if detail else ""))


def first_success(
    callables: Sequence[Callable[[], Deferred[T] | T]],
    stagger: float | None = None,
    clock: IReactorTime | None = None,
) -> Deferred[T]:
    """Return a Deferred for the first successful result among ``callables``.

    ``stagger=None`` starts them all at once (stopping early if one succeeds synchronously).
    Otherwise the first starts now and each next one ``stagger`` seconds after the previous,
    unless a success has arrived; when every running attempt has failed the next starts at
    once instead of waiting out the timer. The first success wins and every other running
    attempt is cancelled (their ``CancelledError`` is consumed here, never logged). If all
    fail, the Deferred fails with :class:`AllAttemptsFailed` (an empty ``callables`` counts
    as all failed). Cancelling the returned Deferred cancels every running attempt and the
    pending timer.

    ``stagger`` needs ``clock``; without one this raises ``ValueError``.
    """
    if stagger is not None:
        if clock is None:
            raise ValueError("first_success(stagger=...) needs a clock")
        if stagger < 0:
            raise ValueError(f"stagger must be >= 0, got {stagger!r}")
    if not callables:
        return fail(AllAttemptsFailed([]))
    return _Race(list(callables), stagger, clock).start()


class _Race(Generic[T]):
    def __init__(
        self,
        callables: list[Callable[[], Deferred[T] | T]],
        stagger: float | None,
        clock: IReactorTime | None,
    ) -> None:
        self._callables = callables
        self._stagger = stagger
        self._clock = None if clock is None else as_clock(clock)
        self._result: Deferred[T] = Deferred(self._cancel)
        self._started = 0
        self._running: dict[int, Deferred[T]] = {}
        self._failures: dict[int, Failure] = {}
        self._timer: DelayedCall | None = None
        # Set once the outcome is decided; every later event (the CancelledErrors of the
        # losers we cancel, a late answer) is then swallowed.
        self._done = False

    def start(self) -> Deferred[T]:
        result = self._result
        if self._stagger is None:
            # _launch may finish the race synchronously; later callables are then not run.
            while not self._done and self._started < len(self._callables):
                self._launch()
        else:
            self._launch_staggered()
        return result

    def _launch_staggered(self) -> None:
        self._timer = None
        self._launch()
        # The launch may have failed synchronously and already launched the next one (or
        # finished the race), so only arm the timer if this is still the latest launch.
        if not self._done and self._timer is None and self._started < len(self._callables):
            assert self._clock is not None and self._stagger is not None
            self._timer = self._clock.callLater(self._stagger, self._launch_staggered)

    def _launch(self) -> None:
        index = self._started
        self._started += 1
        # maybeDeferred takes plain values and Deferreds alike, but its overloads cannot
        # express a callable returning the union, hence the cast.
        d = maybeDeferred(cast("Callable[[], Deferred[T]]", self._callables[index]))
        self._running[index] = d
        # Registered before anything else can see d, so every outcome (including the
        # CancelledError we cause) lands here and d is left holding None.
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(index,), errbackArgs=(index,))

    def _succeeded(self, value: T, index: int) -> None:
        self._running.pop(index, None)
        if self._done:
            return
        self._stop_everything()
        self._result.callback(value)

    def _failed(self, failure: Failure, index: int) -> None:
        self._running.pop(index, None)
        if self._done:
            return
        self._failures[index] = failure
        if self._running:
            return
        if self._started == len(self._callables):
            self._done = True
            failures = [self._failures[i] for i in sorted(self._failures)]
            self._result.errback(AllAttemptsFailed(failures))
        elif self._stagger is not None:
            # Nothing is running, so waiting out the timer would only add latency.
            self._cancel_timer()
            self._launch_staggered()
        # Without a stagger, start()'s loop is still launching the rest.

    def _cancel(self, _: Deferred[T]) -> None:
        # Deferred.cancel() fails the result with CancelledError after this returns.
        self._stop_everything()

    def _stop_everything(self) -> None:
        self._done = True
        self._cancel_timer()
        running, self._running = self._running, {}
        for d in running.values():
            d.cancel()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
