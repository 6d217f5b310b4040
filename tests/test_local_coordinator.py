"""LocalCoordinator: the single-node cache in front of the backend (Clock-driven)."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from gateway.contracts import BackendReply, MethodPolicy, Outcome, ReplyKind, Source
from gateway.proxy.local import LocalCoordinator

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")

CACHE = MethodPolicy(mode="cache", ttl=10.0, stale_ttl=5.0)
COALESCE = MethodPolicy()


class Backend:
    """Counts calls; each returns a Deferred the test fires."""

    def __init__(self) -> None:
        self.pending: list[Deferred[BackendReply]] = []

    def __call__(self) -> Deferred[BackendReply]:
        d: Deferred[BackendReply] = Deferred()
        self.pending.append(d)
        return d

    def answer(self, text: bytes, kind: ReplyKind = ReplyKind.SUCCESS) -> None:
        self.pending.pop(0).callback(BackendReply(text, "binary", kind))


def results(d: Deferred[Outcome]) -> list[Outcome]:
    out: list[Outcome] = []
    d.addCallback(out.append)
    return out


def test_coalesce_mode_always_calls_backend() -> None:
    """In coalesce mode every execute reaches the backend; nothing is remembered."""
    clock, backend = Clock(), Backend()
    coord = LocalCoordinator(clock)
    first = results(coord.execute("k", COALESCE, backend))
    backend.answer(b"a")
    second = results(coord.execute("k", COALESCE, backend))
    assert len(backend.pending) == 1 and first[0].source is Source.BACKEND and not second


def test_cache_hit_within_ttl() -> None:
    """A successful reply is served from the cache until ttl passes."""
    clock, backend = Clock(), Backend()
    coord = LocalCoordinator(clock)
    results(coord.execute("k", CACHE, backend))
    backend.answer(b"a")
    clock.advance(9.9)
    hit = results(coord.execute("k", CACHE, backend))
    assert hit[0].source is Source.CACHE and hit[0].reply.message == b"a" and not backend.pending


def test_stale_served_while_one_refresh_runs() -> None:
    """Past ttl but within stale_ttl the stale reply is served and exactly one refresh starts."""
    clock, backend = Clock(), Backend()
    coord = LocalCoordinator(clock)
    results(coord.execute("k", CACHE, backend))
    backend.answer(b"old")
    clock.advance(12)
    one = results(coord.execute("k", CACHE, backend))
    two = results(coord.execute("k", CACHE, backend))
    assert [o.source for o in one + two] == [Source.STALE, Source.STALE]
    assert len(backend.pending) == 1
    backend.answer(b"new")
    fresh = results(coord.execute("k", CACHE, backend))
    assert fresh[0].source is Source.CACHE and fresh[0].reply.message == b"new"


def test_entry_expires_after_stale_window() -> None:
    """Past ttl + stale_ttl the entry is gone and the caller waits for the backend."""
    clock, backend = Clock(), Backend()
    coord = LocalCoordinator(clock)
    results(coord.execute("k", CACHE, backend))
    backend.answer(b"a")
    clock.advance(15.1)
    waiting = results(coord.execute("k", CACHE, backend))
    assert not waiting and len(backend.pending) == 1


def test_application_exceptions_are_not_cached() -> None:
    """A TApplicationException reply is returned but never stored."""
    clock, backend = Clock(), Backend()
    coord = LocalCoordinator(clock)
    results(coord.execute("k", CACHE, backend))
    backend.answer(b"boom", ReplyKind.APPLICATION_EXCEPTION)
    results(coord.execute("k", CACHE, backend))
    assert len(backend.pending) == 1


def test_declared_exceptions_cached_only_when_asked() -> None:
    """Declared exceptions are cached only with cache_exceptions = true."""
    clock = Clock()
    for cache_exceptions, expected_calls in ((False, 1), (True, 0)):
        backend = Backend()
        coord = LocalCoordinator(clock)
        policy = MethodPolicy(mode="cache", ttl=10, cache_exceptions=cache_exceptions)
        results(coord.execute("k", policy, backend))
        backend.answer(b"busy", ReplyKind.DECLARED_EXCEPTION)
        results(coord.execute("k", policy, backend))
        assert len(backend.pending) == expected_calls


def test_failures_are_not_cached() -> None:
    """A failed backend call reaches the caller and the next call tries again."""
    clock, backend = Clock(), Backend()
    coord = LocalCoordinator(clock)
    failed: list[object] = []
    coord.execute("k", CACHE, backend).addErrback(failed.append)
    backend.pending.pop(0).errback(RuntimeError("down"))
    results(coord.execute("k", CACHE, backend))
    assert len(failed) == 1 and len(backend.pending) == 1


def test_cache_is_bounded() -> None:
    """The least recently used entry is evicted beyond max_entries."""
    clock, backend = Clock(), Backend()
    coord = LocalCoordinator(clock, max_entries=2)
    for key in ("a", "b", "c"):
        results(coord.execute(key, CACHE, backend))
        backend.answer(key.encode())
    assert len(coord) == 2
    results(coord.execute("a", CACHE, backend))
    assert len(backend.pending) == 1
