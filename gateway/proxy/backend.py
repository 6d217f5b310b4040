"""A named backend: its replicas' pools, retries for idempotent calls, and hedging.

Retries happen only for ``idempotent`` methods and only on connection-level failures
(:class:`BackendUnavailable`): a timeout may mean the backend did the work, so it is never
retried. Hedging (``hedge_after``) also needs ``idempotent``: a second replica is asked when
the first has not answered after ``hedge_after`` seconds, and the first answer wins.

The method's ``timeout`` bounds the whole call, retries, backoff and hedges included: each
attempt gets what is left of it. (Followers on other nodes wait ``timeout + lease_ttl`` for a
leader; a leader retrying past ``timeout`` would outlast them.)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from functools import partial

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.contracts import MethodPolicy
from gateway.errors import BackendTimeout, BackendUnavailable, GatewayError
from gateway.primitives import (
    AllAttemptsFailed,
    RetryingCall,
    exponential_backoff,
    first_success,
)
from gateway.proxy.fairness import current_client
from gateway.proxy.upstream import Call, OnReply, UpstreamPool
from gateway.reactors import as_clock
from gateway.thrift import Headers, MessageHeader, ProtocolKind

RETRY_ATTEMPTS = 3


class Backend:
    def __init__(
        self,
        name: str,
        pools: list[UpstreamPool],
        clock: IReactorTime,
        hedge_after: float | None = None,
        retry_backoff: Callable[[], Iterable[float]] | None = None,
    ) -> None:
        if not pools:
            raise ValueError("a backend needs at least one address")
        self.name = name
        self.pools = pools
        self.protocol: ProtocolKind = pools[0].protocol
        self._clock = clock
        self._seconds = as_clock(clock).seconds
        self._hedge_after = hedge_after
        self._rr = 0
        self._retry_backoff = retry_backoff or (lambda: exponential_backoff(0.02, 2.0, 0.5))
        # Calls underway through this backend (retries and hedges included): a config reload
        # that replaces or removes it closes its pools only once they are over (idle()).
        self._in_flight = 0
        self._idle_waiters: list[Deferred[None]] = []

    @property
    def in_flight(self) -> int:
        """Calls underway through this backend now."""
        return self._in_flight

    def idle(self) -> Deferred[None]:
        """Fires once no call is underway through this backend (at once if none is)."""
        if not self._in_flight:
            return succeed(None)
        d: Deferred[None] = Deferred(self._idle_waiters.remove)
        self._idle_waiters.append(d)
        return d

    def _ended(self) -> None:
        self._in_flight -= 1
        if not self._in_flight and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def submit(
        self,
        message: bytes,
        policy: MethodPolicy,
        on_reply: OnReply,
        header: MessageHeader | None = None,
        headers: Headers = (),
    ) -> Call | None:
        """One attempt on the next replica, driven by callbacks (see UpstreamPool.submit).

        For calls that are neither retried nor hedged (non-idempotent methods): the
        passthrough path uses it to forward a call without any Deferred of its own.
        """
        self._rr += 1
        self._in_flight += 1
        return self._pool().submit(
            message,
            on_reply,
            timeout=policy.timeout,
            header=header,
            headers=headers,
            on_end=self._ended,
            client=current_client(),
        )

    def start(self) -> None:
        for pool in self.pools:
            pool.start()

    def stop(self) -> None:
        for pool in self.pools:
            pool.stop()

    def _pool(self, offset: int = 0) -> UpstreamPool:
        return self.pools[(self._rr + offset) % len(self.pools)]

    def call(
        self,
        message: bytes,
        policy: MethodPolicy,
        oneway: bool = False,
        header: MessageHeader | None = None,
        headers: Headers = (),
    ) -> Deferred[bytes]:
        """Send ``message`` (in this backend's protocol) and fire with the reply message.

        ``header``, if given, must be ``read_header(message, self.protocol)``; it goes along
        to the connection (every attempt sends the same bytes) to spare decoding it again.
        ``headers``: THeader info headers, sent with every attempt to a THeader backend.
        """
        self._in_flight += 1
        d = self._call(message, policy, oneway, header, headers, current_client())
        return d.addBoth(self._ended_with)

    def _ended_with(self, result: bytes | Failure) -> bytes | Failure:
        self._ended()
        return result

    def _call(
        self,
        message: bytes,
        policy: MethodPolicy,
        oneway: bool,
        header: MessageHeader | None,
        headers: Headers,
        client: Hashable | None,
    ) -> Deferred[bytes]:
        # ``client`` is read once, at the call: retries and hedges run later, outside the
        # caller's scope, and must count against the same client's share.
        self._rr += 1
        if oneway:
            return self._pool().call(
                message,
                timeout=policy.timeout,
                oneway=True,
                header=header,
                headers=headers,
                client=client,
            )
        if not policy.idempotent:
            return self._pool().call(
                message, timeout=policy.timeout, header=header, headers=headers, client=client
            )
        deadline = self._seconds() + policy.timeout

        def attempt_on(pool: UpstreamPool) -> Deferred[bytes]:
            left = deadline - self._seconds()
            if left <= 0:
                return fail(BackendTimeout(f"gateway: backend timeout after {policy.timeout:g}s"))
            return pool.call(message, timeout=left, header=header, headers=headers, client=client)

        if self._hedge_after is not None and len(self.pools) > 1:
            attempts = [partial(attempt_on, self._pool(i)) for i in range(len(self.pools))]
            d: Deferred[bytes] = first_success(
                attempts, stagger=self._hedge_after, clock=self._clock
            )
            return d.addErrback(_unwrap_all_failed)
        offsets = iter(range(RETRY_ATTEMPTS))

        def attempt() -> Deferred[bytes]:
            # Each retry moves to the next replica, so one dead replica costs one attempt.
            return attempt_on(self._pool(next(offsets, 0)))

        retrying: RetryingCall[bytes] = RetryingCall(self._clock, attempt)
        return retrying.start(
            backoff=self._retry_backoff(),
            max_attempts=RETRY_ATTEMPTS,
            failure_tester=_is_unavailable,
        )


def _is_unavailable(reason: Failure) -> bool:
    """Retryable: the connection failed, so the backend cannot have done the work."""
    return isinstance(reason.value, BackendUnavailable)


def _unwrap_all_failed(reason: Failure) -> Failure:
    """Report the first replica's GatewayError rather than the aggregate."""
    exc = reason.value
    if isinstance(exc, AllAttemptsFailed):
        for failure in exc.failures:
            if isinstance(failure.value, GatewayError):
                return failure
    return reason
