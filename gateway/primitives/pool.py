"""Track outstanding Deferreds and tell waiters when none are left (graceful shutdown).

``add()`` is transparent: the pool's callback passes every result and failure through
unchanged, so the Deferred's owner cannot tell it was pooled. The pool can empty and fill
again any number of times; waiters are told each time it drops to zero.
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from gateway.primitives._fanout import fire_all

__all__ = ["DeferredPool"]

T = TypeVar("T")


class DeferredPool:
    """A count of unfired Deferreds plus the callers waiting for it to reach zero."""

    def __init__(self, clock: IReactorTime | None = None) -> None:
        self._clock = clock
        # A count rather than a set: adding the same Deferred twice is then harmless (each
        # add() puts its own callback on it), and the pool keeps no Deferred alive.
        self._size = 0
        # Ordered set of waiters, so one can be removed in O(1) when it is cancelled.
        self._waiters: dict[Deferred[None], None] = {}

    def add(self, d: Deferred[T]) -> Deferred[T]:
        """Count ``d`` as outstanding until it fires; returns ``d`` itself, unchanged.

        An already-fired ``d`` leaves the pool at once, which counts as the pool emptying
        if nothing else is outstanding.
        """
        self._size += 1
        d.addBoth(self._fired)
        return d

    def __len__(self) -> int:
        return self._size

    def notify_when_empty(
        self, test_immediately: bool = True, timeout: float | None = None
    ) -> Deferred[None]:
        """A Deferred that fires with None the next time the pool is empty.

        With ``test_immediately`` (the default) an already-empty pool gives an already-fired
        Deferred; without it, the caller waits for the pool to next drop to zero. After
        ``timeout`` seconds (needs ``clock``) the waiter fails with ``defer.TimeoutError``.
        Cancelling the returned Deferred removes only that waiter.
        """
        if timeout is not None and self._clock is None:
            raise ValueError("notify_when_empty(timeout=...) needs a DeferredPool(clock=...)")
        if test_immediately and self._size == 0:
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._remove_waiter)
        self._waiters[waiter] = None
        if timeout is not None:
            assert self._clock is not None  # checked above; narrows the type for mypy
            # On timeout addTimeout cancels the waiter (our canceller unregisters it) and
            # turns the CancelledError into defer.TimeoutError.
            waiter.addTimeout(timeout, self._clock)
        return waiter

    def _remove_waiter(self, waiter: Deferred[Any]) -> None:
        self._waiters.pop(waiter, None)

    def _fired(self, result: T) -> T:
        # Passes `result` (value or Failure) straight through: the pool must be invisible.
        self._size -= 1
        if self._size == 0 and self._waiters:
            # Swap first: a waiter's callback may register new waiters (for the *next* time
            # the pool empties) or add new Deferreds; neither may disturb this round.
            waiters, self._waiters = self._waiters, {}
            fire_all(waiters, None)
        return result
