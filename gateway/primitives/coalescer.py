"""Share one in-flight call among every caller asking for the same key (a "DeferredPooler").

While a call for ``key`` is underway, later callers with the same key do not call ``fn``
again: they get their own Deferred that fires with the same result. Once the call has
finished, the next caller starts a new one; results and failures are never remembered.
This is Go's ``x/sync/singleflight`` for Deferreds, with per-caller cancellation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Concatenate, Generic, ParamSpec, Protocol, TypeVar, cast, overload

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from gateway.primitives._fanout import fire_all

__all__ = ["Coalescer", "UnhashableKey", "coalesced"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
S = TypeVar("S")
P = ParamSpec("P")


class _Call(Generic[K, T]):
    """One in-flight call of ``fn`` and the callers waiting for its result."""

    __slots__ = ("abandoned", "cancel_waiter", "deferred", "done", "key", "owner", "waiters")

    def __init__(self, owner: Coalescer[K, T], key: K, deferred: Deferred[T]) -> None:
        self.owner = owner
        self.key = key
        self.deferred = deferred
        # A dict used as an ordered set: waiters fire in arrival order and one can be
        # removed in O(1) when its caller cancels.
        self.waiters: dict[Deferred[T], None] = {}
        self.done = False
        self.abandoned = False
        # Bound once, so a waiter costs one Deferred and one dict slot, not a closure too.
        self.cancel_waiter: Callable[[Deferred[T]], None] = self._cancel_waiter

    def join(self) -> Deferred[T]:
        waiter: Deferred[T] = Deferred(self.cancel_waiter)
        self.waiters[waiter] = None
        return waiter

    def settle(self, result: T | Failure) -> None:
        """Hand ``result`` to every waiter; returns None so no failure stays unhandled here."""
        self.done = True
        # Unregister *before* any waiter runs: a waiter's callback that calls again with the
        # same key must start a fresh call, not join this finished one. The identity check
        # keeps a newer entry (after forget(), or started re-entrantly) in place.
        self.owner._discard(self)
        waiters, self.waiters = self.waiters, {}
        if isinstance(result, Failure) and not self.abandoned:
            self.owner.failures += 1
        fire_all(waiters, result)

    def _cancel_waiter(self, waiter: Deferred[T]) -> None:
        # Deferred.cancel() errbacks `waiter` with CancelledError after this returns, so
        # only the bookkeeping happens here; the other waiters are untouched.
        self.waiters.pop(waiter, None)
        if self.waiters or self.done or self.owner.detached:
            return
        # The last interested caller left: unregister first so a caller arriving during the
        # cancellation below starts a new call, then cancel the shared one.
        self.abandoned = True
        self.owner._discard(self)
        self.deferred.cancel()


def _tag(result: T, shared: bool) -> tuple[T, bool]:
    return (result, shared)


class UnhashableKey(TypeError):
    """A key that cannot be hashed was passed to a :class:`Coalescer` (``key`` holds it)."""

    def __init__(self, key: object, message: str | None = None) -> None:
        if message is None:
            message = (
                f"Coalescer key must be hashable, got {type(key).__name__} {key!r}; "
                "use a tuple/frozenset/str key instead"
            )
        super().__init__(message)
        self.key = key


class Coalescer(Generic[K, T]):
    """Coalesces concurrent calls by key: at most one call of ``fn`` per key is in flight.

    By default the shared call is cancelled (and forgotten) once every caller has cancelled.
    With ``detached=True`` callers leaving never touch it: it runs to its end and stays
    joinable until then, so a caller arriving after all the others left still joins it
    instead of starting a second one (for calls with effects, such as paging someone).

    Not thread-safe; use it from the reactor thread like any Deferred.
    """

    def __init__(self, detached: bool = False) -> None:
        self.detached = detached
        self._calls: dict[K, _Call[K, T]] = {}
        self.calls = 0  # call()/call_shared() invocations
        self.coalesced = 0  # of those, how many joined a call already in flight
        self.failures = 0  # fn invocations that failed (not counting ones every caller cancelled)

    def call(
        self,
        key: K,
        fn: Callable[P, Deferred[T] | T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[T]:
        """Call ``fn(*args, **kwargs)`` unless a call for ``key`` is in flight; join it if so.

        ``fn`` may return a value, a Deferred or raise (as with ``maybeDeferred``). The caller
        always gets a Deferred of its own; cancelling it cancels only this caller, and (unless
        ``detached``) the shared call is cancelled once every caller has cancelled.
        """
        return self._join(key, fn, *args, **kwargs)[0]

    def call_shared(
        self,
        key: K,
        fn: Callable[P, Deferred[T] | T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[tuple[T, bool]]:
        """Like :meth:`call`, firing with ``(result, shared)``; ``shared`` is True for joiners."""
        waiter, shared = self._join(key, fn, *args, **kwargs)
        return waiter.addCallback(_tag, shared)

    def forget(self, key: K) -> None:
        """Stop coalescing onto the current call for ``key``: the next caller starts anew.

        Callers already waiting still get the old call's result.
        """
        if self._lookup(key) is not None:
            del self._calls[key]

    def __contains__(self, key: K) -> bool:
        return self._lookup(key) is not None

    @property
    def in_flight(self) -> int:
        """How many keys have a call in flight."""
        return len(self._calls)

    def _join(
        self,
        key: K,
        fn: Callable[P, Deferred[T] | T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> tuple[Deferred[T], bool]:
        entry = self._lookup(key)
        self.calls += 1
        if entry is not None:
            self.coalesced += 1
            return entry.join(), True
        # The cast only picks maybeDeferred's overload; it accepts Deferred[T] | T at runtime.
        start = cast("Callable[P, Deferred[T]]", fn)
        entry = _Call(self, key, maybeDeferred(start, *args, **kwargs))
        waiter = entry.join()
        # If the result is already there (plain value, raised exception, fired Deferred),
        # settle() runs right here and the entry is never registered: an available result
        # is not pooled. Checking `called` instead would be wrong for a paused Deferred.
        entry.deferred.addBoth(entry.settle)
        if not entry.done:
            self._calls[key] = entry
        return waiter, False

    def _lookup(self, key: K) -> _Call[K, T] | None:
        """The call in flight for ``key``, if any; :class:`UnhashableKey` for a bad key."""
        try:
            return self._calls.get(key)
        except TypeError:
            raise UnhashableKey(key) from None

    def _discard(self, entry: _Call[K, T]) -> None:
        if self._calls.get(entry.key) is entry:
            del self._calls[entry.key]


class _MethodDecorator(Protocol):
    # Overloads, because mypy cannot infer T from `Deferred[T] | T` alone when the method
    # returns a Deferred (Deferred is invariant; it ends up with Deferred[Never]).
    @overload
    def __call__(
        self, method: Callable[Concatenate[S, P], Deferred[T] | T], /
    ) -> Callable[Concatenate[S, P], Deferred[T]]: ...
    @overload
    def __call__(
        self, method: Callable[Concatenate[S, P], Deferred[T]], /
    ) -> Callable[Concatenate[S, P], Deferred[T]]: ...
    @overload
    def __call__(
        self, method: Callable[Concatenate[S, P], T], /
    ) -> Callable[Concatenate[S, P], Deferred[T]]: ...


def coalesced(key: Callable[..., Hashable]) -> _MethodDecorator:
    """Coalesce concurrent calls of a method that share ``key(self, *args, **kwargs)``.

    Each instance (and each decorated method) gets its own :class:`Coalescer`, created on
    first use and stored on the instance, so two objects never share in-flight calls.
    """

    def decorate(
        method: Callable[Concatenate[S, P], Deferred[T] | T], /
    ) -> Callable[Concatenate[S, P], Deferred[T]]:
        # Named after the qualified name so an overriding method that calls super() gets a
        # separate Coalescer from the method it overrides.
        attr = f"_coalescer_{method.__qualname__}"
        key_name = getattr(key, "__qualname__", repr(key))

        def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
            k = key(self, *args, **kwargs)
            coalescer: Coalescer[Hashable, T] | None = getattr(self, attr, None)
            if coalescer is None:
                coalescer = Coalescer()
                setattr(self, attr, coalescer)
            try:
                return coalescer.call(k, method, self, *args, **kwargs)
            except UnhashableKey:
                # Raised before `method` runs (maybeDeferred would have caught it from there).
                raise UnhashableKey(
                    k,
                    f"key function {key_name} for {method.__qualname__} returned an "
                    f"unhashable key of type {type(k).__name__}: {k!r}",
                ) from None

        return functools.wraps(method)(wrapper)

    return decorate
