"""Many timeouts on one timer: per-call deadlines without a DelayedCall per call.

``Deferred.addTimeout`` schedules (and later cancels) one reactor timer per call, and the
reactor keeps every one of them in its heap. A proxy gives every call a timeout that almost
never fires, so that bookkeeping is pure overhead. :class:`Deadlines` instead drops each
deadline into a bucket of ``resolution`` seconds and keeps one timer, for the earliest
bucket: adding and cancelling a deadline are a dict insert and a dict delete, and a
deadline fires at most ``resolution`` late (never early).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

from gateway.reactors import DelayedCall, as_clock

__all__ = ["Deadline", "Deadlines"]


class Deadline:
    """One registered deadline; :meth:`cancel` it once it no longer matters."""

    __slots__ = ("_bucket", "_owner", "on_expiry")

    def __init__(self, owner: Deadlines, bucket: int, on_expiry: Callable[[], object]) -> None:
        self._owner = owner
        self._bucket = bucket
        self.on_expiry = on_expiry

    def cancel(self) -> None:
        """Forget this deadline (harmless if it has fired or was cancelled already)."""
        entries = self._owner._buckets.get(self._bucket)
        if entries is not None:
            entries.pop(self, None)


class Deadlines:
    """Runs ``on_expiry`` of every deadline that passes, within ``resolution`` seconds."""

    def __init__(self, clock: IReactorTime, resolution: float = 0.05) -> None:
        if resolution <= 0:
            raise ValueError("resolution must be > 0")
        self._clock = as_clock(clock)
        self._resolution = resolution
        self._buckets: dict[int, dict[Deadline, None]] = {}
        self._order: list[int] = []  # heap of bucket numbers (a bucket appears once)
        self._timer: DelayedCall | None = None
        self._timer_bucket: int | None = None

    def __len__(self) -> int:
        """Deadlines registered and not yet fired or cancelled."""
        return sum(len(entries) for entries in self._buckets.values())

    def add(self, seconds: float, on_expiry: Callable[[], object]) -> Deadline:
        """Call ``on_expiry()`` once ``seconds`` have passed, unless cancelled first."""
        bucket = math.ceil((self._clock.seconds() + seconds) / self._resolution)
        entries = self._buckets.get(bucket)
        if entries is None:
            entries = self._buckets[bucket] = {}
            heapq.heappush(self._order, bucket)
            if self._timer_bucket is None or bucket < self._timer_bucket:
                self._schedule(bucket)
        deadline = Deadline(self, bucket, on_expiry)
        entries[deadline] = None
        return deadline

    def _schedule(self, bucket: int) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        delay = max(0.0, bucket * self._resolution - self._clock.seconds())
        self._timer = self._clock.callLater(delay, self._expire)
        self._timer_bucket = bucket

    def _expire(self) -> None:
        self._timer = None
        self._timer_bucket = None
        now = self._clock.seconds()
        order = self._order
        while order and order[0] * self._resolution <= now + 1e-9:
            entries = self._buckets.pop(heapq.heappop(order), {})
            for deadline in list(entries):
                deadline.on_expiry()
        # Empty buckets (every deadline cancelled) are dropped on the way, not timed.
        while order and not self._buckets.get(order[0]):
            self._buckets.pop(heapq.heappop(order), None)
        if order:
            self._schedule(order[0])
