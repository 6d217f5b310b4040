"""Timing helpers for the two roles: a leader's lease renewer and a follower's notice listener."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.cluster.completions import Notice
from gateway.cluster.scripts import RENEW, ScriptRunner
from gateway.reactors import DelayedCall, as_clock
from gateway.redis.connection import Arg, Reply


class LeaseRenewer:
    """Extends a leader's lease every ``interval`` seconds while its backend call runs.

    Renewal is compare-then-extend (``RENEW`` script), so a leader whose lease already
    expired and was taken over stops renewing instead of stealing it back, and learns that
    it is deposed (``deposed`` becomes True, ``on_deposed`` runs once): it still answers its
    own callers, but its ``complete`` will neither cache nor release anything. A failed
    renewal (Redis briefly away) is retried at the next tick; the lease may lapse
    meanwhile, which only means a follower takes over.
    """

    def __init__(
        self,
        scripts: ScriptRunner,
        clock: IReactorTime,
        keys: list[str],
        token: str,
        lease_ms: int,
        interval: float,
        on_deposed: Callable[[], None] | None = None,
    ) -> None:
        self._scripts = scripts
        self._on_deposed = on_deposed
        self.deposed = False
        self._clock = as_clock(clock)
        self._keys = keys  # the lease, then the call's in-flight entry
        self._args: list[Arg] = [token, lease_ms]
        self._interval = interval
        self._timer: DelayedCall | None = None
        self._stopped = False

    def start(self) -> LeaseRenewer:
        self._schedule()
        return self

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self) -> None:
        if not self._stopped:
            self._timer = self._clock.callLater(self._interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        # The next tick is scheduled only after this one answered, so renewals never pile
        # up behind a slow Redis.
        self._scripts.run(RENEW, self._keys, self._args).addCallbacks(self._renewed, self._failed)

    def _renewed(self, reply: Reply) -> None:
        if reply == 1:
            self._schedule()
            return
        # The lease is no longer ours (expired, taken over): stop renewing.
        if not self._stopped and not self.deposed:
            self.deposed = True
            if self._on_deposed is not None:
                self._on_deposed()

    def _failed(self, _: Failure) -> None:
        self._schedule()


_PENDING = object()


class NoticeListener:
    """A follower's registration for one ``(key, token)`` notice, kept across timed waits.

    The waiter (from :meth:`Completions.wait`) is registered once, before the follower
    re-checks Redis, and stays registered while the follower polls after each lease
    period; so no poll reply can race ahead of a notice and lose it.
    """

    def __init__(self, waiter: Deferred[Notice], clock: IReactorTime) -> None:
        self._waiter = waiter
        self._clock = clock
        self._result: object = _PENDING
        self._wakeups: list[Deferred[bool]] = []
        waiter.addBoth(self._fired)

    @property
    def result(self) -> Notice | Failure:
        """The notice (or the failure, e.g. RedisUnavailable); only once :meth:`wait` said so."""
        assert self._result is not _PENDING
        return self._result  # type: ignore[return-value]  # narrowed by the sentinel check

    @property
    def has_failed(self) -> bool:
        """True once the registration failed (e.g. NoticesLost): no notice will come."""
        return isinstance(self._result, Failure)

    def wait(self, seconds: float) -> Deferred[bool]:
        """Fires True when the notice (or a failure) is in, False after ``seconds``."""
        if self._result is not _PENDING:
            d: Deferred[bool] = Deferred()
            d.callback(True)
            return d
        wakeup: Deferred[bool] = Deferred()
        self._wakeups = [w for w in self._wakeups if not w.called]  # drop timed-out ones
        self._wakeups.append(wakeup)
        wakeup.addTimeout(seconds, self._clock, onTimeoutCancel=lambda _r, _t: False)
        return wakeup

    def interrupt(self) -> None:
        """End the current waits now, as if they had timed out (they fire False)."""
        wakeups, self._wakeups = self._wakeups, []
        for wakeup in wakeups:
            if not wakeup.called:
                wakeup.callback(False)

    def cancel(self) -> None:
        """Unregister; the notice is no longer wanted."""
        if self._result is _PENDING:
            self._waiter.cancel()

    def _fired(self, result: Notice | Failure) -> None:
        # Returning None also consumes a failure, so a cancelled waiter logs nothing.
        self._result = result
        wakeups, self._wakeups = self._wakeups, []
        for wakeup in wakeups:
            if not wakeup.called:
                wakeup.callback(True)
