"""Single-node coordination: an in-memory result cache in front of the backend.

Used when no Redis is configured, and by the cluster coordinator as its fallback while Redis
is unreachable. In-flight dedupe is not done here: the node's flight table (gateway.flights)
already joined every identical call on this node before ``execute`` is reached, and keeps
the flight until its backend call has finished.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from gateway.contracts import (
    BackendCall,
    BackendReply,
    MethodPolicy,
    NoSpawner,
    Outcome,
    Source,
    Spawner,
)
from gateway.primitives import Coalescer
from gateway.reactors import as_clock


@dataclass
class _Entry:
    reply: BackendReply
    fresh_until: float
    stale_until: float


class LocalCoordinator:
    """Implements :class:`gateway.contracts.Coordinator` with a bounded LRU cache."""

    def __init__(
        self, clock: IReactorTime, max_entries: int = 10_000, spawner: Spawner | None = None
    ) -> None:
        self._clock = as_clock(clock)
        self._max_entries = max_entries
        self._spawner = spawner or NoSpawner()
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        # Background refreshes of stale entries: at most one per key at a time.
        self._refreshes: Coalescer[str, Outcome] = Coalescer()

    def __len__(self) -> int:
        return len(self._cache)

    def execute(
        self, key: str, policy: MethodPolicy, call_backend: BackendCall
    ) -> Deferred[Outcome]:
        if policy.mode == "cache":
            entry = self._cache.get(key)
            now = self._clock.seconds()
            if entry is not None:
                if now < entry.fresh_until:
                    self._cache.move_to_end(key)
                    return defer.succeed(Outcome(entry.reply, Source.CACHE))
                if now < entry.stale_until:
                    self._cache.move_to_end(key)
                    if key not in self._refreshes:
                        refresh = self._refreshes.call(key, self._call, key, policy, call_backend)
                        refresh.addErrback(lambda _: None)  # a failed refresh keeps the stale entry
                        self._spawner.spawn(key, refresh)  # the drain waits for it
                    return defer.succeed(Outcome(entry.reply, Source.STALE))
                del self._cache[key]
            if key in self._refreshes:
                # stale_ttl ran out while the entry was being refreshed: wait for that call
                # rather than make a second one (cancelling this caller leaves it running).
                return self._refreshes.call(key, self._call, key, policy, call_backend)
            return self._call(key, policy, call_backend)
        # Coalesce mode: nothing to cache, so nothing to do but call (the flight table
        # already made this the only call for the key on this node).
        d: Deferred[BackendReply] = defer.maybeDeferred(call_backend)
        return d.addCallback(_from_backend)

    def cached(self, key: str, policy: MethodPolicy) -> Outcome | None:
        entry = self._cache.get(key)
        if entry is None or self._clock.seconds() >= entry.fresh_until:
            return None  # stale entries go through execute(), which refreshes them
        self._cache.move_to_end(key)
        return Outcome(entry.reply, Source.CACHE)

    def _call(self, key: str, policy: MethodPolicy, call_backend: BackendCall) -> Deferred[Outcome]:
        def store(reply: BackendReply) -> Outcome:
            if policy.may_cache(reply):
                now = self._clock.seconds()
                self._cache[key] = _Entry(
                    reply, now + policy.ttl, now + policy.ttl + policy.stale_ttl
                )
                self._cache.move_to_end(key)
                while len(self._cache) > self._max_entries:
                    self._cache.popitem(last=False)
            return Outcome(reply, Source.BACKEND)

        d: Deferred[BackendReply] = defer.maybeDeferred(call_backend)
        return d.addCallback(store)


def _from_backend(reply: BackendReply) -> Outcome:
    return Outcome(reply, Source.BACKEND)
