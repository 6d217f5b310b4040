"""The node's one table of in-flight calls: who is running what, for whom, since when.

Every coalescable call of a node goes through :meth:`FlightTable.join`. A *flight* is the
one execution for a call key on this node - whatever the coordinator does to get its outcome
(serve a cache entry, follow another node's leader, call the backend). Identical calls that
arrive while it runs join it; each caller gets its own Deferred.

A flight lives until its outcome is in **whoever is still waiting**: callers that hang up
only stop waiting. A flight whose every caller left keeps running, stays joinable (so a
later identical call joins it instead of calling the backend a second time), and still
publishes its outcome to other nodes' followers and fills the cache. This is the only
place that knows what is in flight on a node; the coalescing primitive underneath only fans
the outcome out to the callers.

Background work a coordinator starts for a key without a caller waiting on it (the refresh
of a stale cache entry) is registered with :meth:`spawn`, so that :meth:`drain` waits for it
too. :meth:`drain` is the node's shutdown: it waits for every flight and background task up
to a timeout, then *abandons* the rest by cancelling them - a cluster leader that is
cancelled publishes "abandoned", so its followers on other nodes take over at once instead
of waiting out its lease.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.contracts import Outcome
from gateway.errors import ShuttingDown
from gateway.observe import HotKeyRecorder, split_call_key
from gateway.primitives import Coalescer, DeferredPool
from gateway.reactors import as_clock
from gateway.thrift import key_parts


class Flight:
    """One execution running on this node (compared by identity).

    A plain slotted class (one is made per call that reaches the coordinator): ``callers``
    counts the callers it answers (the first included; 0 for background work), ``preview``
    is shown with its hot-key entry (opted-in methods only).
    """

    __slots__ = ("callers", "deferred", "key", "preview", "started", "table")

    def __init__(
        self,
        table: FlightTable,
        key: str,
        started: float,
        deferred: Deferred[Any],
        callers: int = 1,
        preview: str | None = None,
    ) -> None:
        self.table = table
        self.key = key
        self.started = started
        self.deferred = deferred
        self.callers = callers
        self.preview = preview

    @property
    def background(self) -> bool:
        return self.callers == 0

    def finished(self, result: object) -> object:
        """Its outcome is in (passed on): it leaves the table."""
        return self.table._finished(self, result)


@dataclass(frozen=True)
class FlightInfo:
    """A read-only view of a flight for ops (``gateway status``, metrics)."""

    key: str
    backend: str
    method: str  # the upstream name, service included when multiplexed
    age: float
    callers: int
    background: bool


class FlightTable:
    """Joins identical calls, keeps each execution until its outcome is in, drains on stop.

    With ``hot_keys``, every finished flight is reported once, with how many callers it
    answered (the hot-key ranking ops see); :meth:`oldest_started_at` feeds the node's
    "oldest call in flight" gauge.
    """

    def __init__(self, clock: IReactorTime, hot_keys: HotKeyRecorder | None = None) -> None:
        self._clock = as_clock(clock)
        self._hot_keys = hot_keys
        self._reactor = clock
        # Detached: a caller leaving never cancels the flight (see the module docstring).
        self._joins: Coalescer[str, Outcome] = Coalescer(detached=True)
        self._running: dict[Flight, None] = {}  # every flight and background task, by identity
        self._by_key: dict[str, Flight] = {}  # the joinable flight of each key
        self._idle = DeferredPool(clock)
        self._abandoning = False

    def __len__(self) -> int:
        """Flights and background tasks running now."""
        return len(self._running)

    def join(
        self, key: str, start: Callable[[], Deferred[Outcome]], preview: str | None = None
    ) -> Deferred[tuple[Outcome, bool]]:
        """The outcome of the flight for ``key``: the running one, or ``start()``'s.

        Fires with ``(outcome, shared)``; ``shared`` is True for callers that joined a flight
        started by an earlier caller. Cancelling the returned Deferred only stops this caller
        waiting. ``preview`` (the first caller's) is shown with the key's hot-key entry.
        """
        flight = self._by_key.get(key)
        if flight is not None:
            flight.callers += 1
        return self._joins.call_shared(key, self._start, key, start, preview)

    def answered(self, key: str, preview: str | None = None) -> None:
        """A call for ``key`` answered at once (a cache hit): never a flight, but a hot key's
        calls all the same."""
        if self._hot_keys is not None:
            self._hot_keys.record(*split_call_key(key), 1, preview)

    def spawn(self, key: str, work: Deferred[Any]) -> None:
        """Count ``work`` (no caller waits on it) as running until it fires: drain waits."""
        if not work.called:
            self._register(Flight(self, key, self._clock.seconds(), work, callers=0))

    def oldest_started_at(self) -> float | None:
        """When the oldest flight or task still running started (clock seconds), if any."""
        return min((f.started for f in self._running), default=None)

    def flights(self) -> list[FlightInfo]:
        """What is running now, oldest first."""
        now = self._clock.seconds()
        return sorted(
            (
                FlightInfo(f.key, *key_parts(f.key), now - f.started, f.callers, f.background)
                for f in self._running
            ),
            key=lambda info: -info.age,
        )

    def settled(self) -> Deferred[None]:
        """Fires once every flight and background task running *now* has finished.

        Flights started later do not count: a config reload waits for the calls that may
        still use the backends it replaced (a flight may reach its backend only after a
        Redis round trip), not for the traffic that follows it.
        """
        running_now = DeferredPool()
        for flight in self._running:
            running_now.add(flight.deferred)  # transparent: passes every result through
        return running_now.notify_when_empty()

    def drain(self, timeout: float) -> Deferred[int]:
        """Wait up to ``timeout`` seconds for everything running; abandon what is left.

        Fires with the number of flights and tasks abandoned (0: all finished in time).
        Abandoning cancels them; callers still waiting get :class:`ShuttingDown`.
        """
        waiting = self._idle.notify_when_empty(timeout=timeout)

        def finished(result: Failure | None) -> int:
            if result is None:
                return 0
            if not isinstance(result.value, defer.TimeoutError | CancelledError):
                result.raiseException()
            left = list(self._running)
            self._abandoning = True
            for flight in left:
                flight.deferred.cancel()
            return len(left)

        return waiting.addBoth(finished)

    # -- internals --------------------------------------------------------------------------

    def _start(self, key: str, start: Callable[[], Deferred[Outcome]], preview: str | None) -> Any:
        d = start()
        if d.called:  # an outcome already in (a cache hit) is never a flight
            self.answered(key, preview)
            return d
        flight = self._register(Flight(self, key, self._clock.seconds(), d, preview=preview))
        self._by_key[key] = flight
        return d

    def _register(self, flight: Flight) -> Flight:
        self._running[flight] = None
        flight.deferred.addBoth(flight.finished)
        # After finished(): drain's waiters see this flight gone from the table.
        self._idle.add(flight.deferred)
        return flight

    def _finished(self, flight: Flight, result: object) -> object:
        # Runs before the Coalescer's own callback (added after start() returned), so a
        # caller woken by this outcome that calls again starts a new flight.
        self._running.pop(flight, None)
        if self._by_key.get(flight.key) is flight:
            del self._by_key[flight.key]
        if self._hot_keys is not None and flight.callers:
            method, key_id = split_call_key(flight.key)
            self._hot_keys.record(method, key_id, flight.callers, flight.preview)
        if (
            self._abandoning
            and isinstance(result, Failure)
            and isinstance(result.value, CancelledError)
        ):
            return Failure(ShuttingDown("gateway: shutting down, call abandoned"))  # type: ignore[no-untyped-call]  # Twisted leaves Failure() untyped
        return result
