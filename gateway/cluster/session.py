"""Node sessions: a leader that died is seen in well under a second, not after its lease.

Every node process has a *session* ``<node_id>.<boot nonce>`` (a restarted node is a new
session), and every lease token it takes starts with it (``<session>/<random>``). The node
keeps two liveness signals in Redis, both on connections it has anyway:

* ``<prefix>session:<session>`` - a string with a ``session_ttl`` expiry (default 1 s),
  renewed every ``session_ttl / 2.5`` (each renewal sent on time, whether or not the
  previous one was answered yet). It lapses when the node stops renewing it: process
  gone, host gone, partitioned away, or paused (GC, SIGSTOP) for longer than that.
* a subscription to the channel ``<prefix>alive:<session>`` on the node's pub/sub
  connection. Redis drops it the moment that connection closes - a killed process's kernel
  closes its sockets at once - so ``PUBSUB NUMSUB`` reads 0 right away.

A follower's node watches the sessions of the leaders it follows (:class:`SessionWatch`):
a PTTL + PUBSUB NUMSUB reading of every watched session every ``check_interval``, only
while following - on one Redis one script call per check for all of them (however many
leader nodes it follows), in a Redis Cluster one PTTL per session (their keys are in
different slots).
A session is dead when its key is gone, or when nobody is subscribed to its channel *and* it
missed a renewal (a live node whose pub/sub connection merely blipped keeps renewing, so it
is not taken for dead). Followers of a dead session's lease then take it over at once, with
a ``poll`` that frees the lease only if it still holds the dead leader's token.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.cluster.keys import KeySchema
from gateway.cluster.scripts import SESSIONS, ScriptRunner
from gateway.primitives import DeferredDict
from gateway.redis.connection import RedisCommands, Reply

log = Logger(namespace="gateway.cluster")

RENEWALS_PER_TTL = 2.5  # a renewal may be lost (or slow) once without the session lapsing
OVERDUE_MARGIN_MS = 60  # how late a renewal may be (scheduling jitter) before it is "missed"


def new_session(node_id: str) -> str:
    """A session id for this process: the node id plus a random boot nonce."""
    return f"{node_id}.{secrets.token_hex(4)}"


def session_of(token: str) -> str:
    """The session a lease token belongs to (tokens are ``<session>/<random>``)."""
    return token.rpartition("/")[0]


def node_of(token: str) -> str:
    """The node id of a lease token's holder (empty if the token has no session)."""
    return session_of(token).rpartition(".")[0]


def is_dead(pttl_ms: int, subscribers: int | None, ttl_ms: int, renew_ms: float) -> bool:
    """Whether a session with these readings has ended.

    ``pttl_ms`` is PTTL of the session key (-2: gone); ``subscribers`` PUBSUB NUMSUB of its
    channel (None where that cannot be read, e.g. Redis Cluster). Nobody subscribed means
    the node's pub/sub connection is closed; it also counts as dead only once a renewal is
    overdue, so a pub/sub reconnect of a live node is not mistaken for its death.
    """
    if pttl_ms == -2:
        return True
    if subscribers == 0 and pttl_ms >= 0:
        since_renewal = ttl_ms - pttl_ms
        return since_renewal > renew_ms + OVERDUE_MARGIN_MS
    return False


class SessionKeeper:
    """Keeps this node's session key alive while Redis is up (``start``/``stop``)."""

    def __init__(
        self,
        redis: RedisCommands,
        keys: KeySchema,
        session: str,
        clock: IReactorTime,
        session_ttl: float,
    ) -> None:
        self.session = session
        self._redis = redis
        self._key = keys.session(session)
        self._ttl_ms = max(1, int(session_ttl * 1000))
        # Each tick sends a renewal without waiting for the previous one's reply: a slow
        # answer must not delay the next renewal (LoopingCall would wait for a Deferred).
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._interval = session_ttl / RENEWALS_PER_TTL
        redis.add_state_callback(self._state)

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self._interval, now=True)

    def stop(self) -> Deferred[None]:
        """Stop renewing and delete the session: followers take over from us at once."""
        if self._loop.running:
            self._loop.stop()
        if not self._redis.is_up:
            return succeed(None)
        d = self._redis.execute("DEL", self._key)
        return d.addBoth(lambda _: None)

    def _tick(self) -> None:
        self.renew()

    def renew(self) -> Deferred[None]:
        """One renewal; never fails (the next one tries again)."""
        if not self._redis.is_up:
            return succeed(None)
        d = self._redis.execute("SET", self._key, "1", "PX", self._ttl_ms)
        return d.addCallbacks(lambda _: None, self._failed)

    def _state(self, up: bool) -> None:
        if up and self._loop.running:
            self.renew()  # at once: it may have lapsed while Redis was away

    def _failed(self, reason: Failure) -> None:
        log.debug("session not renewed: {r}", r=reason.getErrorMessage())


class SessionWatch:
    """Tells followers when the session of the leader they follow has ended."""

    def __init__(
        self,
        redis: RedisCommands,
        keys: KeySchema,
        clock: IReactorTime,
        session_ttl: float,
        check_interval: float = 0.1,
        pubsub_counts: bool = True,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_ms = max(1, int(session_ttl * 1000))
        self._renew_ms = self._ttl_ms / RENEWALS_PER_TTL
        self._pubsub_counts = pubsub_counts
        self._scripts = ScriptRunner(redis)
        self._dead: DeferredDict[str, None] = DeferredDict(clock, keep_values=False)
        self._loop = LoopingCall(self._check)
        self._loop.clock = clock
        self._interval = check_interval
        self._checking = False

    def watch(self, session: str) -> Deferred[None]:
        """Fires once ``session`` has ended; cancel it to stop watching."""
        d = self._dead.get(session)
        if not self._loop.running:
            self._loop.start(self._interval, now=False)
        return d

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _check(self) -> Deferred[None] | None:
        sessions = self._dead.waiting_keys()
        if not sessions:
            self._loop.stop()  # started again by the next watch()
            return None
        if self._checking or not self._redis.is_up:
            return None  # the previous check is still out, or Redis is away
        self._checking = True
        d = self._readings(sessions)
        return d.addCallbacks(self._checked, self._failed, callbackArgs=(sessions,))

    def _readings(self, sessions: list[str]) -> Deferred[Any]:
        """PTTL (and, with pubsub_counts, PUBSUB NUMSUB) of each session, interleaved."""
        keys = [self._keys.session(session) for session in sessions]
        if self._pubsub_counts:  # one Redis: one command reads every watched session
            channels = [self._keys.alive(session) for session in sessions]
            return self._scripts.run(SESSIONS, keys, channels)
        # A Redis Cluster: one PTTL per session (other slots), sent back to back.
        sent: list[Deferred[Any]] = [self._redis.execute("PTTL", key) for key in keys]
        return gatherResults(sent, consumeErrors=True)

    def _checked(self, replies: list[Reply], sessions: list[str]) -> None:
        self._checking = False
        step = 2 if self._pubsub_counts else 1
        for i, session in enumerate(sessions):
            pttl = replies[i * step]
            subscribers = _numsub(replies[i * step + 1]) if self._pubsub_counts else None
            if isinstance(pttl, int) and is_dead(pttl, subscribers, self._ttl_ms, self._renew_ms):
                log.info("session {s} ended: taking over its leases", s=session)
                self._dead.set(session, None)

    def _failed(self, reason: Failure) -> None:
        self._checking = False
        log.debug("session check failed: {r}", r=reason.getErrorMessage())


def _numsub(reply: Reply) -> int | None:
    """The count of ``PUBSUB NUMSUB <channel>`` (``[channel, count]``), None if unreadable."""
    if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], int):
        return reply[1]
    return None
