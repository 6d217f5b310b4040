"""Leader-finished notices: ONE pub/sub connection per node, one PSUBSCRIBE for all keys.

A leader's ``complete`` script publishes ``<token>`` or ``<token>\\n<envelope>`` (when the
envelope is small enough to inline) on ``<prefix>{K}:done``. This node subscribes once to
the pattern matching every such channel and feeds the messages into a
:class:`~gateway.primitives.DeferredDict` keyed by ``(K, token)`` with
``keep_values=False``: a notice wakes whoever waits for it right now and is then gone.
That is why a follower registers its waiter *before* it re-checks ``result:<token>`` once
with GET - a notice that arrived before the waiter existed is not lost, it is in Redis.

Subscriptions do not survive a reconnect, so every "connection up" resubscribes; the node
counts as ready (:attr:`is_up`) only once Redis acknowledged the PSUBSCRIBE. While it is
not, every waiter is failed with :class:`RedisUnavailable` so followers stop waiting for
notices that can no longer arrive.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.cluster.connection import RedisConnector, RedisUnavailable, Reply, StateCallback
from gateway.cluster.keys import KeySchema
from gateway.primitives import DeferredDict

log = Logger(namespace="gateway.cluster")

# What a waiter receives: the inlined envelope, or None ("finished; GET result:<token>").
Notice = bytes | None


def parse_notice(message: bytes) -> tuple[str, Notice]:
    """Split a notice the Lua ``complete`` script published: ``<token>[\\n<envelope>]``."""
    token, sep, envelope = message.partition(b"\n")
    return token.decode("ascii", "replace"), (envelope if sep else None)


class Completions:
    """Waits for leaders' notices; owns the node's subscriber connection.

    ``conn`` must be a ``RedisConnector(url, clock, subscriber=True)`` used for nothing
    else. ``start()`` starts it; ``stop()`` fails the waiters and closes it.
    """

    def __init__(self, conn: RedisConnector, keys: KeySchema, clock: IReactorTime) -> None:
        self._conn = conn
        self._keys = keys
        self._waiters: DeferredDict[tuple[str, str], Notice] = DeferredDict(
            clock, keep_values=False
        )
        self._ready = False
        self._callbacks: list[StateCallback] = []
        conn.set_message_handler(self._on_message)
        conn.add_state_callback(self._connection_state)

    @property
    def is_up(self) -> bool:
        return self._ready

    def add_state_callback(self, callback: StateCallback) -> None:
        """``callback(True)`` once subscribed, ``callback(False)`` once notices may be missed."""
        self._callbacks.append(callback)

    def start(self) -> None:
        self._conn.start()

    def stop(self) -> Deferred[None]:
        self._set_ready(False)
        return self._conn.stop()

    def wait(self, key: str, token: str, timeout: float | None = None) -> Deferred[Notice]:
        """Fires with the notice for ``(key, token)``; fails with RedisUnavailable when down.

        ``timeout`` seconds without a notice fail it with ``defer.TimeoutError``.
        """
        if not self._ready:
            return fail(RedisUnavailable("not subscribed"))
        return self._waiters.get((key, token), timeout=timeout)

    def fail_all(self, reason: BaseException) -> None:
        """Wake every waiter with ``reason`` (the command connection went down, too)."""
        failure = Failure(reason)  # type: ignore[no-untyped-call]  # Twisted leaves it unannotated
        for pair in self._waiters.waiting_keys():
            self._waiters.fail(pair, failure)

    def _on_message(self, channel: bytes, message: bytes) -> None:
        key = self._keys.key_of_done(channel.decode("utf-8", "surrogateescape"))
        if key is None:
            return
        token, notice = parse_notice(message)
        self._waiters.set((key, token), notice)

    def _connection_state(self, up: bool) -> None:
        if not up:
            self._set_ready(False)
            return
        d = self._conn.execute("PSUBSCRIBE", self._keys.done_pattern())
        d.addCallbacks(self._subscribed, self._subscribe_failed)

    def _subscribed(self, _: Reply) -> None:
        # The connection may have dropped (and come back) while PSUBSCRIBE was in flight;
        # only a subscription on the live connection counts.
        if self._conn.is_up:
            self._set_ready(True)

    def _subscribe_failed(self, failure: Failure) -> None:
        # A lost connection comes back through the state callback and subscribes again.
        log.warn("PSUBSCRIBE failed: {reason}", reason=failure.getErrorMessage())

    def _set_ready(self, ready: bool) -> None:
        if ready == self._ready:
            return
        self._ready = ready
        if not ready:
            self.fail_all(RedisUnavailable("subscriber connection lost"))
        for callback in list(self._callbacks):
            try:
                callback(ready)
            except Exception:
                log.failure("completions state callback failed")
