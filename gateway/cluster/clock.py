"""Typed views of the reactor interfaces this package uses.

zope Interfaces are not understood by mypy without a plugin (their methods look like they
lack ``self``), so modules here call the reactor through these Protocols instead; callers
still pass the reactor (or a ``task.Clock`` in tests) as ``IReactorTime``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.internet.interfaces import IReactorTime


class DelayedCall(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    def seconds(self) -> float: ...

    def callLater(self, delay: float, fn: Callable[..., object], *args: Any) -> DelayedCall: ...


def as_clock(reactor: IReactorTime) -> Clock:
    return cast(Clock, reactor)
