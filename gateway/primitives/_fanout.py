"""Firing a set of waiter Deferreds with one result: shared by the primitives."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


def fire_all(waiters: Iterable[Deferred[T]], result: T | Failure) -> None:
    """Fire every waiter, in order, with ``result``; returns None (nothing left unhandled).

    The caller swaps ``waiters`` out of its own state first, so callbacks that register new
    waiters do not join this round. A waiter that is already ``called`` (an earlier waiter's
    callback cancelled it) is skipped. A Failure is copied for each waiter (shared traceback
    and exception): Deferred cleans failures in place, which must not leak across callers.
    """
    if isinstance(result, Failure):
        for waiter in waiters:
            if not waiter.called:
                waiter.errback(copy_failure(result))
    else:
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(result)


def copy_failure(reason: Failure | BaseException) -> Failure:
    """A new Failure: a copy of a Failure (keeping its live traceback, which ``copy.copy()``
    would not) or one wrapping an exception."""
    return Failure(reason)  # type: ignore[no-untyped-call]  # Twisted leaves it unannotated
