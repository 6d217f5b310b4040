"""Test helpers for Deferred-based code: reading outcomes, and a Deferred-returning double."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def results(d: Deferred[Any]) -> list[Any]:
    """Collect what ``d`` fires with (value or Failure), consuming failures."""
    out: list[Any] = []

    def collect(r: Any) -> None:
        out.append(r)

    d.addBoth(collect)
    return out


def outcome(d: Deferred[Any]) -> Any:
    """What d has fired with (its result, or its Failure, which is then consumed)."""
    fired: list[Any] = []
    d.addBoth(fired.append)
    assert fired, "Deferred has not fired"
    return fired[0]


def failure_of(d: Deferred[Any]) -> Failure:
    """The Failure d has fired with (consuming it), or an AssertionError if it has none."""
    fired: list[Any] = []
    d.addBoth(fired.append)
    assert fired and isinstance(fired[0], Failure), fired
    failure: Failure = fired[0]
    return failure


class DeferredSource:
    """A fake fn: every call records its arguments and returns a fresh Deferred the test
    fires itself (``deferreds[i]`` for call ``i``); cancelled calls are recorded by index."""

    def __init__(self) -> None:
        self.args: list[tuple[Any, ...]] = []
        self.deferreds: list[Deferred[Any]] = []
        self.cancelled: list[int] = []

    def __call__(self, *args: Any) -> Deferred[Any]:
        index = len(self.deferreds)
        self.args.append(args)
        d: Deferred[Any] = Deferred(lambda _: self.cancelled.append(index))
        self.deferreds.append(d)
        return d
