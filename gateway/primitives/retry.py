"""Retry a Deferred-returning call on a clock-driven backoff schedule.

:func:`exponential_backoff` produces the delays; :class:`RetryingCall` runs the attempts.
Time comes in as ``clock: IReactorTime`` so tests drive it with ``twisted.internet.task.Clock``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar, cast

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.reactors import DelayedCall, as_clock

T = TypeVar("T")


def exponential_backoff(
    initial: float = 0.1,
    factor: float = 2.0,
    max_delay: float = 30.0,
    rng: Callable[[], float] | None = random.random,
) -> Iterator[float]:
    """Yield delays forever: delay n (from 0) is ``rng() * min(max_delay, initial * factor**n)``.

    This is "full jitter": each delay is drawn uniformly from ``[0, cap)``, which spreads
    retries from many clients that failed together instead of having them retry in lock-step.
    ``rng=None`` turns jitter off and yields the caps themselves. The iterator is infinite;
    bound it with ``max_attempts`` or ``itertools.islice``.

    Raises ``ValueError`` at once (not on first ``next()``) for a negative ``initial`` or
    ``max_delay`` or a ``factor`` below 1.
    """
    if initial < 0 or max_delay < 0:
        raise ValueError(f"delays must be >= 0 (initial={initial!r}, max_delay={max_delay!r})")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor!r}")
    return _backoff(initial, factor, max_delay, rng)


def _backoff(
    initial: float, factor: float, max_delay: float, rng: Callable[[], float] | None
) -> Iterator[float]:
    cap = min(max_delay, initial)
    while True:
        yield cap if rng is None else rng() * cap
        # Grow the cap multiplicatively instead of computing factor**n: factor**n overflows
        # (OverflowError) after ~1000 attempts, while the clamped product stays finite.
        cap = min(max_delay, cap * factor)


class RetryingCall(Generic[T]):
    """Call ``fn(*args, **kwargs)`` until it succeeds, waiting between attempts.

    ``start()`` makes the first attempt synchronously and returns a Deferred for the outcome:

    * the first success fires it with that result;
    * a failure that ``failure_tester`` rejects (returns False for) fails it at once with
      that failure;
    * when ``max_attempts`` attempts have failed, or the ``backoff`` iterable runs out, it
      fails with the **first** failure, not the last. The first failure is usually the
      informative one (the backend refused or errored); later ones tend to be secondary
      effects of the same outage (timeouts, connection refused while it restarts) that hide
      the cause. The Failure gets an ``attempts`` attribute (int) with the number of attempts
      made, as does this object;
    * ``cancel()``, or cancelling the returned Deferred, stops further attempts, cancels the
      attempt underway (if any) and fails the Deferred with ``CancelledError``.

    A RetryingCall is single-use: ``start()`` may be called once.
    """

    def __init__(
        self,
        clock: IReactorTime,
        fn: Callable[..., Deferred[T] | T],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        self._clock = as_clock(clock)
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self.attempts = 0
        self._result: Deferred[T] | None = None
        self._current: Deferred[T] | None = None
        self._timer: DelayedCall | None = None
        self._first_failure: Failure | None = None
        self._backoff: Iterator[float] = iter(())
        self._max_attempts: int | None = None
        self._failure_tester: Callable[[Failure], bool] | None = None
        # Set once the outcome is decided (success, final failure, or cancel). Late events
        # from an attempt we cancelled must then be swallowed, not acted on.
        self._finished = False

    def start(
        self,
        backoff: Iterable[float] | None = None,
        max_attempts: int | None = None,
        failure_tester: Callable[[Failure], bool] | None = None,
    ) -> Deferred[T]:
        """Make the first attempt now and return a Deferred for the eventual outcome.

        ``backoff`` gives the delay before each retry (``None``: ``exponential_backoff()``,
        which is unbounded, so pass ``max_attempts`` or a finite iterable unless retrying
        forever is intended). ``max_attempts`` bounds the total number of attempts
        (``None``: bounded only by ``backoff``). ``failure_tester(failure)`` returns True if
        the failure is worth retrying (``None``: every failure is).
        """
        if self._result is not None:
            raise RuntimeError("RetryingCall.start() may only be called once")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts!r}")
        if backoff is None:
            # rng looked up now, not bound as exponential_backoff's default at import time,
            # so a patched random.random takes effect.
            backoff = exponential_backoff(rng=random.random)
        self._backoff = iter(backoff)
        self._max_attempts = max_attempts
        self._failure_tester = failure_tester
        self._result = Deferred(self._canceller)
        result = self._result
        self._attempt()
        return result

    def cancel(self) -> None:
        """Stop retrying and cancel the attempt underway; the Deferred fails with CancelledError.

        Does nothing before ``start()`` or once the outcome is known.
        """
        if self._result is not None and not self._result.called:
            self._result.cancel()

    def _canceller(self, _: Deferred[T]) -> None:
        # Deferred.cancel() errbacks the result with CancelledError after this returns, so
        # all that is left here is to stop the machinery. _finished goes first because
        # cancelling the current attempt runs _failed synchronously.
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        current, self._current = self._current, None
        if current is not None:
            current.cancel()

    def _attempt(self) -> None:
        self._timer = None
        self.attempts += 1
        # maybeDeferred takes plain values and Deferreds alike, but its overloads cannot
        # express a callable returning the union, hence the cast.
        fn = cast("Callable[..., Deferred[T]]", self._fn)
        d = maybeDeferred(fn, *self._args, **self._kwargs)
        self._current = d
        # Both handlers return None: the outcome travels through self._result, so the
        # attempt's own Deferred must not be left holding an unhandled failure.
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(d,), errbackArgs=(d,))

    def _succeeded(self, value: T, d: Deferred[T]) -> None:
        if self._finished or d is not self._current:
            return
        self._finish()
        assert self._result is not None
        self._result.callback(value)

    def _failed(self, failure: Failure, d: Deferred[T]) -> None:
        if self._finished or d is not self._current:
            return
        self._current = None
        if self._first_failure is None:
            self._first_failure = failure
        first = self._first_failure
        try:
            retryable = self._failure_tester is None or self._failure_tester(failure)
        except Exception as e:
            # A broken tester must not leave the caller waiting forever.
            self._fail(Failure(e))  # type: ignore[no-untyped-call]  # Failure() is untyped
            return
        if not retryable:
            self._fail(failure)
            return
        if self._max_attempts is not None and self.attempts >= self._max_attempts:
            self._fail(first)
            return
        delay = next(self._backoff, None)
        if delay is None:
            self._fail(first)
            return
        # Always go through the clock, even for a zero delay, so a synchronously failing fn
        # does not recurse once per attempt.
        self._timer = self._clock.callLater(max(0.0, delay), self._attempt)

    def _fail(self, failure: Failure) -> None:
        self._finish()
        failure.attempts = self.attempts  # type: ignore[attr-defined]  # API.md: Failure carries it
        assert self._result is not None
        self._result.errback(failure)

    def _finish(self) -> None:
        self._finished = True
        self._current = None
        # Drop the first failure: its traceback frames would otherwise live as long as we do.
        self._first_failure = None
