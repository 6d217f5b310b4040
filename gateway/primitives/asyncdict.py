"""A dictionary whose readers wait for values that have not been produced yet.

``get(key)`` always returns a Deferred: already fired if the value is stored, otherwise one
that fires when a producer calls ``set(key, value)`` or ``fail(key, reason)``. Each waiter is
independent: its timeout or cancellation removes only itself, and a key with neither a
stored value nor waiters leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Generic, TypeVar, overload

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.primitives._fanout import copy_failure, fire_all

__all__ = ["DeferredDict"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")


class _Canceller(Generic[K]):
    """Removes one cancelled waiter of ``key``; a slotted object is smaller than a closure."""

    __slots__ = ("key", "owner")

    def __init__(self, owner: DeferredDict[K, Any], key: K) -> None:
        self.owner = owner
        self.key = key

    def __call__(self, waiter: Deferred[Any]) -> None:
        self.owner._remove_waiter(self.key, waiter)


class DeferredDict(Generic[K, V]):
    """Values by key, with Deferreds for the ones not there yet.

    With ``keep_values=False`` a value only wakes the current waiters and is not stored, so
    later readers wait for the next ``set``.
    """

    def __init__(self, clock: IReactorTime | None = None, keep_values: bool = True) -> None:
        self._clock = clock
        self._keep_values = keep_values
        self._values: dict[K, V] = {}
        # key -> ordered set of waiters. A key is present only while it has waiters.
        self._waiters: dict[K, dict[Deferred[V], None]] = {}

    def get(self, key: K, timeout: float | None = None) -> Deferred[V]:
        """The value for ``key``, now (already fired) or once it is set or failed.

        After ``timeout`` seconds (needs ``clock``) the waiter fails with
        ``defer.TimeoutError`` and is removed; cancelling it removes only that waiter.
        """
        if key in self._values:
            return succeed(self._values[key])
        if timeout is not None and self._clock is None:
            raise ValueError("DeferredDict.get(timeout=...) needs a DeferredDict(clock=...)")
        waiter: Deferred[V] = Deferred(_Canceller(self, key))
        self._waiters.setdefault(key, {})[waiter] = None
        if timeout is not None:
            assert self._clock is not None  # checked above; narrows the type for mypy
            # On timeout addTimeout cancels the waiter (the canceller unregisters it) and
            # turns the CancelledError into defer.TimeoutError.
            waiter.addTimeout(timeout, self._clock)
        return waiter

    def set(self, key: K, value: V) -> None:
        """Fire every waiter of ``key`` with ``value``; store it too if ``keep_values``."""
        # Store before firing, so a waiter's callback that reads `key` again sees the value.
        if self._keep_values:
            self._values[key] = value
        # Pop before firing: a callback that calls get(key) (with keep_values=False) is a new
        # waiter for the next value, not one of this round.
        waiters = self._waiters.pop(key, None)
        if waiters:
            fire_all(waiters, value)

    def fail(self, key: K, reason: Failure | BaseException) -> None:
        """Fail every waiter of ``key`` with ``reason``; nothing is stored.

        A value already stored for ``key`` is left as it is.
        """
        failure = reason if isinstance(reason, Failure) else copy_failure(reason)
        waiters = self._waiters.pop(key, None)
        if waiters:
            fire_all(waiters, failure)  # each waiter gets its own copy

    @overload
    def pop(self, key: K) -> V: ...
    @overload
    def pop(self, key: K, default: D, /) -> V | D: ...

    def pop(self, key: K, *default: Any) -> Any:
        """Remove and return the stored value (KeyError or ``default`` if there is none).

        Waiters of ``key`` are not affected.
        """
        if len(default) > 1:
            raise TypeError(f"pop expected at most 2 arguments, got {1 + len(default)}")
        return self._values.pop(key, *default)

    def discard(self, key: K) -> None:
        """Remove the stored value for ``key`` if there is one; waiters are not affected."""
        self._values.pop(key, None)

    def waiting_keys(self) -> list[K]:
        """Keys that have at least one waiter, in the order they were first waited for."""
        return list(self._waiters)

    def waiter_count(self, key: K) -> int:
        """How many callers are waiting for ``key``."""
        return len(self._waiters.get(key, ()))

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: K) -> bool:
        return key in self._values

    def _remove_waiter(self, key: K, waiter: Deferred[Any]) -> None:
        waiters = self._waiters.get(key)
        if waiters is None:
            return
        waiters.pop(waiter, None)
        if not waiters:
            del self._waiters[key]
