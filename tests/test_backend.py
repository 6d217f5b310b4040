"""Backend: retries (idempotent, BackendUnavailable only, next replica), hedging, unwrapping."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gateway.contracts import MethodPolicy
from gateway.errors import BackendTimeout, BackendUnavailable, GatewayError
from gateway.primitives import AllAttemptsFailed
from gateway.proxy.backend import RETRY_ATTEMPTS, Backend, _unwrap_all_failed
from gateway.proxy.upstream import UpstreamPool
from gateway.thrift import Headers, MessageHeader, ProtocolKind

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")

IDEMPOTENT = MethodPolicy(idempotent=True, timeout=5.0)
PLAIN = MethodPolicy(timeout=5.0)


class FakePool:
    """Duck-typed UpstreamPool: records calls; the test fires ``pending`` Deferreds."""

    protocol = ProtocolKind.BINARY

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[tuple[bytes, float, bool]] = []
        self.pending: list[Deferred[bytes]] = []
        self.cancelled = 0
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def call(
        self,
        message: bytes,
        *,
        timeout: float,
        oneway: bool = False,
        header: MessageHeader | None = None,
        headers: Headers = (),
        client: object = None,
    ) -> Deferred[bytes]:
        self.calls.append((message, timeout, oneway))
        if oneway:
            return succeed(b"")

        def cancelled(_: Deferred[bytes]) -> None:
            self.cancelled += 1

        d: Deferred[bytes] = Deferred(cancelled)
        self.pending.append(d)
        return d


def no_backoff() -> Iterator[float]:
    return iter([0.0] * 10)


def make(
    n: int = 1, hedge_after: float | None = None
) -> tuple[Backend, list[FakePool], Clock, list[Any]]:
    pools = [FakePool(f"r{i}") for i in range(n)]
    clock = Clock()
    backend = Backend(
        "b",
        cast(list[UpstreamPool], pools),
        clock,
        hedge_after=hedge_after,
        retry_backoff=no_backoff,
    )
    return backend, pools, clock, []


def outstanding(pools: list[FakePool]) -> list[tuple[FakePool, Deferred[bytes]]]:
    return [(p, d) for p in pools for d in p.pending if not d.called]


def test_start_and_stop_reach_every_pool() -> None:
    backend, pools, _, _ = make(2)
    backend.start()
    backend.stop()
    assert all(p.started and p.stopped for p in pools)


def test_non_idempotent_call_is_never_retried() -> None:
    """A connection failure of a non-idempotent call goes straight to the caller."""
    backend, pools, clock, out = make(2)
    backend.call(b"m", PLAIN).addBoth(out.append)
    outstanding(pools)[0][1].errback(BackendUnavailable("down"))
    clock.advance(1)
    assert sum(len(p.calls) for p in pools) == 1
    assert isinstance(out[0], Failure) and out[0].check(BackendUnavailable)


def test_idempotent_call_retries_on_next_replica_three_times() -> None:
    """Each retry of an idempotent call moves to the next replica; after 3 it gives up."""
    backend, pools, clock, out = make(3)
    backend.call(b"m", IDEMPOTENT).addBoth(out.append)
    order: list[str] = []
    for i in range(RETRY_ATTEMPTS):
        [(pool, d)] = outstanding(pools)
        order.append(pool.name)
        d.errback(BackendUnavailable(f"down {i}"))
        clock.advance(0)
    assert not outstanding(pools)
    assert sorted(order) == ["r0", "r1", "r2"]  # three different replicas
    assert isinstance(out[0], Failure) and out[0].check(BackendUnavailable)
    assert str(out[0].value) == "down 0"  # the first failure is reported


def test_retry_succeeds_on_a_later_attempt() -> None:
    backend, pools, clock, out = make(2)
    backend.call(b"m", IDEMPOTENT).addBoth(out.append)
    [(first, d)] = outstanding(pools)
    d.errback(BackendUnavailable("down"))
    clock.advance(0)
    [(second, d)] = outstanding(pools)
    assert second is not first
    d.callback(b"reply")
    assert out == [b"reply"]


def test_timeout_is_never_retried() -> None:
    """A timeout may mean the backend did the work: even an idempotent call is not retried."""
    backend, pools, clock, out = make(2)
    backend.call(b"m", IDEMPOTENT).addBoth(out.append)
    outstanding(pools)[0][1].errback(BackendTimeout("slow"))
    clock.advance(1)
    assert sum(len(p.calls) for p in pools) == 1
    assert isinstance(out[0], Failure) and out[0].check(BackendTimeout)


def test_retries_share_one_timeout_budget() -> None:
    """Each retry gets only what is left of the method's timeout, so retries never outlast
    it (followers on other nodes wait timeout + lease_ttl for a leader)."""
    pools = [FakePool("r0"), FakePool("r1")]
    clock = Clock()
    backend = Backend(
        "b", cast(list[UpstreamPool], pools), clock, retry_backoff=lambda: iter([1.0] * 10)
    )
    out: list[Any] = []
    backend.call(b"m", IDEMPOTENT).addBoth(out.append)
    clock.advance(3.0)
    [(first, d)] = outstanding(pools)
    d.errback(BackendUnavailable("down"))
    clock.advance(1.0)  # the backoff
    [(second, d)] = outstanding(pools)
    assert second is not first and second.calls[-1][1] == 1.0  # 5 s - 3 s - 1 s
    d.errback(BackendUnavailable("down again"))
    clock.advance(1.0)
    assert isinstance(out[0], Failure) and out[0].check(BackendTimeout)
    assert sum(len(p.calls) for p in pools) == 2


def test_hedged_call_asks_second_replica_and_first_success_wins() -> None:
    """hedge_after: an idempotent call unanswered for that long also goes to a second replica;
    the first answer wins and the other attempt is cancelled."""
    backend, pools, clock, out = make(2, hedge_after=0.05)
    backend.call(b"m", IDEMPOTENT).addBoth(out.append)
    [(first_pool, _)] = outstanding(pools)
    clock.advance(0.049)
    assert len(outstanding(pools)) == 1
    clock.advance(0.001)
    [hedge] = [d for p, d in outstanding(pools) if p is not first_pool]
    hedge.callback(b"from hedge")
    assert out == [b"from hedge"]
    assert first_pool.cancelled == 1 and not outstanding(pools)


def test_non_idempotent_call_is_not_hedged() -> None:
    backend, pools, clock, out = make(2, hedge_after=0.05)
    backend.call(b"m", PLAIN).addBoth(out.append)
    clock.advance(1)
    [(_, d)] = outstanding(pools)
    d.callback(b"reply")
    assert out == [b"reply"] and sum(len(p.calls) for p in pools) == 1


def test_hedged_failures_report_the_first_gateway_error() -> None:
    """When every hedged attempt fails the caller gets the first GatewayError, not the
    aggregate AllAttemptsFailed."""
    backend, pools, clock, out = make(2, hedge_after=0.05)
    backend.call(b"m", IDEMPOTENT).addBoth(out.append)
    outstanding(pools)[0][1].errback(BackendUnavailable("first"))
    clock.advance(0)  # every running attempt failed: the next starts at once
    [(_, d)] = outstanding(pools)
    d.errback(BackendTimeout("second"))
    assert isinstance(out[0], Failure) and out[0].check(BackendUnavailable)
    assert str(out[0].value) == "first"


def test_unwrap_all_failed_skips_non_gateway_errors() -> None:
    failures = [Failure(CancelledError()), Failure(BackendTimeout("t")), Failure(GatewayError("g"))]
    unwrapped = _unwrap_all_failed(Failure(AllAttemptsFailed(failures)))
    assert unwrapped is failures[1]
    other = Failure(ValueError("x"))
    assert _unwrap_all_failed(other) is other
    none_gateway = Failure(AllAttemptsFailed([Failure(ValueError("y"))]))
    assert _unwrap_all_failed(none_gateway) is none_gateway


def test_oneway_goes_to_one_pool_unretried() -> None:
    backend, pools, _, out = make(2)
    backend.call(b"m", IDEMPOTENT, oneway=True).addBoth(out.append)
    assert out == [b""] and [c[2] for p in pools for c in p.calls] == [True]
