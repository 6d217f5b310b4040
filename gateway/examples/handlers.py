"""Handlers for the example services: slow, countable, and able to fail on request.

The message (or title) chooses the outcome so a test or demo can ask for any reply kind
through the gateway without a side channel: ``busy:``/``missing:`` raise the declared
exception, ``crash:`` raises an undeclared one (the generated processor answers it with
``TApplicationException(INTERNAL_ERROR)``), anything else succeeds after ``delay`` seconds -
or ``slow_delay`` seconds if it starts with ``slow`` (a slow call beside fast ones).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from twisted.internet import task
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import classImplements

from gateway.examples.gen.poetry import Poetry
from gateway.examples.gen.poetry.ttypes import PoemNotFound
from gateway.examples.gen.supervisor import Supervisor
from gateway.examples.gen.supervisor.ttypes import SupervisorBusy

T = TypeVar("T")

BUSY_PREFIX = "busy:"
MISSING_PREFIX = "missing:"
CRASH_PREFIX = "crash:"
SLOW_PREFIX = "slow"


class CallCounter:
    """Calls received per method, counted on arrival (before any delay).

    Counting on arrival is what makes coalescing visible: N identical calls made while one is
    in flight through the gateway must show up here as 1, whatever the backend's delay.
    """

    def __init__(self, methods: tuple[str, ...]) -> None:
        self._counts = dict.fromkeys(methods, 0)

    def arrived(self, method: str) -> None:
        self._counts[method] = self._counts.get(method, 0) + 1

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)


class _DelayedHandler:
    """Shared plumbing: a clock, the reply delay and the per-method counters."""

    methods: tuple[str, ...] = ()

    def __init__(self, clock: IReactorTime, delay: float = 0.0, slow_delay: float = 2.0) -> None:
        self.clock = clock
        self.delay = delay
        self.slow_delay = slow_delay
        self.counter = CallCounter(self.methods)

    def _after_delay(self, fn: Callable[[str], T], arg: str) -> Deferred[T]:
        delay = self.slow_delay if arg.startswith(SLOW_PREFIX) else self.delay
        # With no delay answer in the same reactor turn: a needless callLater(0) per call
        # costs a noticeable share of throughput in the herd benchmarks.
        if delay <= 0:
            return maybeDeferred(fn, arg)
        return task.deferLater(self.clock, delay, fn, arg)

    def backendStats(self) -> dict[str, int]:
        """Answered at once; the call counts itself, like every other method."""
        self.counter.arrived("backendStats")
        return self.counter.snapshot()


class SupervisorHandler(_DelayedHandler):
    """Implements ``Supervisor`` from idl/supervisor.thrift."""

    methods = ("alertSupervisor", "notify", "backendStats")

    def alertSupervisor(self, message: str) -> Deferred[str]:
        self.counter.arrived("alertSupervisor")
        return self._after_delay(_alert_reply, message)

    def notify(self, message: str) -> None:
        """Oneway: nothing goes back, so counting is the only observable effect."""
        self.counter.arrived("notify")


class PoetryHandler(_DelayedHandler):
    """Implements ``Poetry`` from idl/poetry.thrift."""

    methods = ("getPoem", "backendStats")

    def getPoem(self, title: str) -> Deferred[str]:
        self.counter.arrived("getPoem")
        return self._after_delay(_poem_reply, title)


def _alert_reply(message: str) -> str:
    if message.startswith(BUSY_PREFIX):
        raise SupervisorBusy(reason=message)
    if message.startswith(CRASH_PREFIX):
        raise ValueError(message)
    return "ack:" + message


def _poem_reply(title: str) -> str:
    if title.startswith(MISSING_PREFIX):
        raise PoemNotFound(title=title)
    if title.startswith(CRASH_PREFIX):
        raise ValueError(title)
    return f"{title}\n  Many asked the same thing at once;\n  the backend heard it only once.\n"


# The generated Processor adapts its handler with ``Iface(handler)``, which fails unless the
# class declares the zope interface. classImplements (not @implementer) keeps mypy's view of
# the classes intact, since the generated Iface is untyped.
classImplements(SupervisorHandler, Supervisor.Iface)
classImplements(PoetryHandler, Poetry.Iface)
