"""Leader-finished notices: ONE pub/sub connection per node, one PSUBSCRIBE for all keys.

A leader's ``complete`` script publishes ``<token> <n> <key>`` (``n``: the key's length in
bytes), followed by the envelope when it is small enough to inline, on its bucket's channel
``<prefix>{b}:done``. This node subscribes once to the pattern matching every such channel
and feeds the messages into a
:class:`~gateway.primitives.DeferredDict` keyed by ``(K, token)`` with
``keep_values=False``: a notice wakes whoever waits for it right now and is then gone.
That is why a follower registers its waiter *before* it re-checks ``result:<token>`` once
with GET - a notice that arrived before the waiter existed is not lost, it is in Redis.

Subscriptions do not survive a reconnect, so every "connection up" resubscribes; the node
counts as ready (:attr:`is_up`) only once Redis acknowledged the PSUBSCRIBE. While it is
not, every waiter is failed with :class:`NoticesLost` so followers stop waiting for
notices that may never arrive and poll for their leader's result instead (the command
connection may well be up: a pub/sub-only blip must not send followers to the backend).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.cluster.keys import KeySchema
from gateway.primitives import DeferredDict
from gateway.redis.connection import RedisConnector, RedisUnavailable, Reply, StateCallback

log = Logger(namespace="gateway.cluster")

# What a waiter receives: the inlined envelope, or None ("finished; GET result:<token>").
Notice = bytes | None


class NoticesLost(RedisUnavailable):
    """The subscription is down: notices may be missed; poll over the command connection."""


def parse_notice(message: bytes) -> tuple[str, str, Notice] | None:
    """``(key, token, envelope or None)`` of a notice, or None if it is not one.

    The Lua ``complete`` script publishes ``<token> <n> <key>[<envelope>]``, ``n`` being the
    key's length in bytes (keys are client-chosen method names and may hold any character).
    """
    token, sep1, rest = message.partition(b" ")
    size, sep2, rest = rest.partition(b" ")
    if not (sep1 and sep2 and size.isdigit()) or int(size) > len(rest):
        return None
    n = int(size)
    key = rest[:n].decode("utf-8", "surrogateescape")
    envelope = rest[n:]
    return key, token.decode("ascii", "replace"), (envelope or None)


class Completions:
    """Waits for leaders' notices; owns the node's subscriber connection.

    ``conn`` must be a ``RedisConnector(url, clock, subscriber=True)`` used for nothing
    else. ``start()`` starts it; ``stop()`` fails the waiters and closes it.
    """

    def __init__(
        self,
        conn: RedisConnector,
        keys: KeySchema,
        clock: IReactorTime,
        session: str | None = None,
    ) -> None:
        self._conn = conn
        self._keys = keys
        # While this process lives it stays subscribed to its session's "alive" channel, so
        # other nodes see it die the moment its connection closes (see cluster/session.py).
        self._alive = keys.alive(session) if session is not None else None
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
        """Fires with the notice for ``(key, token)``; fails with NoticesLost when down.

        ``timeout`` seconds without a notice fail it with ``defer.TimeoutError``.
        """
        if not self._ready:
            return fail(NoticesLost("not subscribed"))
        return self._waiters.get((key, token), timeout=timeout)

    def fail_all(self, reason: BaseException) -> None:
        """Wake every waiter with ``reason`` (the command connection went down, too)."""
        failure = Failure(reason)  # type: ignore[no-untyped-call]  # Twisted leaves it unannotated
        for pair in self._waiters.waiting_keys():
            self._waiters.fail(pair, failure)

    def _on_message(self, channel: bytes, message: bytes) -> None:
        if not self._keys.is_done(channel.decode("utf-8", "surrogateescape")):
            return
        parsed = parse_notice(message)
        if parsed is not None:
            key, token, notice = parsed
            self._waiters.set((key, token), notice)

    def _connection_state(self, up: bool) -> None:
        if not up:
            self._set_ready(False)
            return
        sent = [self._conn.execute("PSUBSCRIBE", self._keys.done_pattern())]
        if self._alive is not None:
            sent.append(self._conn.execute("SUBSCRIBE", self._alive))
        d = gatherResults(sent, consumeErrors=True)
        d.addCallbacks(self._subscribed, self._subscribe_failed)

    def _subscribed(self, _: list[Reply]) -> None:
        # The connection may have dropped (and come back) while PSUBSCRIBE was in flight;
        # only a subscription on the live connection counts.
        if self._conn.is_up:
            self._set_ready(True)

    def _subscribe_failed(self, failure: Failure) -> None:
        # A lost connection comes back through the state callback and subscribes again.
        log.warn("subscribing failed: {reason}", reason=failure.getErrorMessage())

    def _set_ready(self, ready: bool) -> None:
        if ready == self._ready:
            return
        self._ready = ready
        if not ready:
            self.fail_all(NoticesLost("subscriber connection lost"))
        for callback in list(self._callbacks):
            try:
                callback(ready)
            except Exception:
                log.failure("completions state callback failed")
