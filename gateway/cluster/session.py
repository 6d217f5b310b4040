"""Node sessions: a leader that died is seen in well under a second, a paused one never.

Every node process has a *session* ``<node_id>.<boot nonce>`` (a restarted node is a new
session), and every lease token it takes starts with it (``<session>/<random>``). The node
keeps two liveness signals in Redis, both on connections it has anyway:

* ``<prefix>session:<session>`` - a string renewed every ``session_ttl / 2.5`` (each renewal
  sent on time, whether or not the previous one was answered yet) with an expiry of
  ``session_ttl`` *plus* that interval, so it has at least ``session_ttl`` left at every
  moment while the node runs. Its value is the Redis client id of the connection that
  renews it (``CLIENT ID``). It lapses when the node stops renewing it for longer than
  ``session_ttl``: process gone, host gone, partitioned away, or paused (GC, SIGSTOP)
  for longer than that.
* a subscription to the channel ``<prefix>alive:<session>`` on the node's pub/sub
  connection. Redis drops it the moment that connection closes - a killed process's kernel
  closes its sockets at once - so ``PUBSUB NUMSUB`` reads 0 right away.

A follower's node watches the sessions of the leaders it follows (:class:`SessionWatch`):
one reading of every watched session every ``check_interval``, only while following: on
one Redis one script call per check for all of them (PTTL + GET + PUBSUB NUMSUB of each,
however many leader nodes it follows), in a Redis Cluster one PTTL per session (their keys
are in different slots). The rule errs toward "alive": a session is dead only on evidence a
pause cannot produce -

* its key is gone (Redis expired it by its own clock: no renewal for ``session_ttl``), or
* *both* of the process's connections are closed: nobody is subscribed to its alive
  channel, a renewal is overdue, *and* ``CLIENT LIST ID`` no longer lists the connection
  its key names. A paused process keeps its sockets open; only death (or Redis / the
  network closing both of them) closes both, so a pub/sub reconnect of a live or paused
  node is never taken for its death.

Followers of a dead session's lease then take it over at once, with a ``poll`` that frees
the lease only if it still holds the dead leader's token.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Literal

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.cluster.keys import KeySchema
from gateway.cluster.scripts import SESSIONS, ScriptRunner
from gateway.primitives import DeferredDict
from gateway.redis.connection import RedisCommandError, RedisCommands, Reply

log = Logger(namespace="gateway.cluster")

RENEWALS_PER_TTL = 2.5  # a renewal may be lost (or slow) once without the session lapsing
OVERDUE_MARGIN_MS = 60  # how late a renewal may be (scheduling jitter) before it is "missed"
_CLIENT_ID = re.compile(rb"(?m)^id=(\d+) ")

Reading = Literal["dead", "alive", "suspect"]


def new_session(node_id: str) -> str:
    """A session id for this process: the node id plus a random boot nonce."""
    return f"{node_id}.{secrets.token_hex(4)}"


def session_of(token: str) -> str:
    """The session a lease token belongs to (tokens are ``<session>/<random>``)."""
    return token.rpartition("/")[0]


def node_of(token: str) -> str:
    """The node id of a lease token's holder (empty if the token has no session)."""
    return session_of(token).rpartition(".")[0]


def key_ttl_ms(session_ttl: float) -> int:
    """The expiry each renewal gives the session key: ``session_ttl`` plus one renewal
    interval, so that right before the next renewal it still has ``session_ttl`` left."""
    ttl_ms = max(1, int(session_ttl * 1000))
    return ttl_ms + int(ttl_ms / RENEWALS_PER_TTL)


def reading(pttl_ms: int, subscribers: int | None, key_ms: int, renew_ms: float) -> Reading:
    """What a session's PTTL and PUBSUB NUMSUB say, on their own.

    ``pttl_ms`` is PTTL of the session key (-2: gone), ``key_ms`` the expiry each renewal
    sets; ``subscribers`` PUBSUB NUMSUB of its channel (None where that cannot be read,
    e.g. Redis Cluster). Only a lapsed key is death by itself. Nobody subscribed while a
    renewal is overdue is a *suspect*: dead only if the renewing connection is gone too
    (:class:`SessionWatch` asks Redis), because a paused node whose pub/sub connection
    reconnects reads exactly the same.
    """
    if pttl_ms == -2:
        return "dead"
    if subscribers == 0 and pttl_ms >= 0 and key_ms - pttl_ms > renew_ms + OVERDUE_MARGIN_MS:
        return "suspect"
    return "alive"


def client_ids(reply: Reply) -> set[int]:
    """The client ids in a ``CLIENT LIST`` reply."""
    text = reply.encode() if isinstance(reply, str) else reply
    if not isinstance(text, bytes):
        return set()
    return {int(m) for m in _CLIENT_ID.findall(text)}


def renewing_client(value: Reply) -> int | None:
    """The client id a session key names (None: unknown, e.g. a node that could not ask)."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    return int(text) if isinstance(text, str) and text.isdecimal() else None


class SessionKeeper:
    """Keeps this node's session key alive while Redis is up (``start``/``stop``).

    ``client_id``: name the renewing connection in the key (``CLIENT ID``), which lets
    followers confirm a death before the key lapses; off in a Redis Cluster, where their
    connection may not be on the server ours is.
    """

    def __init__(
        self,
        redis: RedisCommands,
        keys: KeySchema,
        session: str,
        clock: IReactorTime,
        session_ttl: float,
        client_id: bool = True,
    ) -> None:
        self.session = session
        self._redis = redis
        self._key = keys.session(session)
        self._key_ms = key_ttl_ms(session_ttl)
        self._ask_id = client_id
        self._value = "-"  # the renewing connection's client id once known
        self._warned = False
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
        d = self._redis.execute("SET", self._key, self._value, "PX", self._key_ms)
        return d.addCallbacks(lambda _: None, self._failed)

    def _state(self, up: bool) -> None:
        # A new connection is a new client id: never name the old one meanwhile (a follower
        # could take it for a closed connection of a live node).
        self._value = "-"
        if not up:
            return
        if self._loop.running:
            self.renew()  # at once: it may have lapsed while Redis was away
        if self._ask_id:
            self._redis.execute("CLIENT", "ID").addCallbacks(self._named, self._unnamed)

    def _named(self, reply: Reply) -> None:
        if isinstance(reply, int) and self._redis.is_up:
            self._value = str(reply)
            if self._loop.running:
                self.renew()

    def _unnamed(self, reason: Failure) -> None:
        if not isinstance(reason.value, RedisCommandError):
            return  # the connection went away: the next one asks again
        if not self._warned:  # once: every reconnect asks again
            self._warned = True
            log.warn(
                "CLIENT ID failed ({r}): if this node is killed, others see it only once its "
                "session key lapses",
                r=reason.getErrorMessage(),
            )

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
        self._key_ms = key_ttl_ms(session_ttl)
        self._renew_ms = session_ttl * 1000 / RENEWALS_PER_TTL
        self._pubsub_counts = pubsub_counts
        self._scripts = ScriptRunner(redis)
        self._dead: DeferredDict[str, None] = DeferredDict(clock, keep_values=False)
        self._loop = LoopingCall(self._check)
        self._loop.clock = clock
        self._interval = check_interval
        self._checking = False
        self._client_list_failed = False  # logged once: kills are then seen at key expiry

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
        d.addCallback(self._checked, sessions)
        return d.addErrback(self._failed).addBoth(self._done)

    def _readings(self, sessions: list[str]) -> Deferred[Any]:
        """PTTL (and, with pubsub_counts, GET and PUBSUB NUMSUB) of each session, interleaved."""
        keys = [self._keys.session(session) for session in sessions]
        if self._pubsub_counts:  # one Redis: one command reads every watched session
            channels = [self._keys.alive(session) for session in sessions]
            return self._scripts.run(SESSIONS, keys, channels)
        # A Redis Cluster: one PTTL per session (other slots), sent back to back.
        sent: list[Deferred[Any]] = [self._redis.execute("PTTL", key) for key in keys]
        return gatherResults(sent, consumeErrors=True)

    def _checked(self, replies: list[Reply], sessions: list[str]) -> Deferred[None] | None:
        step = 3 if self._pubsub_counts else 1
        suspects: dict[str, int] = {}  # session -> the client id its key names
        for i, session in enumerate(sessions):
            pttl = replies[i * step]
            subscribers = _numsub(replies[i * step + 2]) if self._pubsub_counts else None
            if not isinstance(pttl, int):
                continue
            seen = reading(pttl, subscribers, self._key_ms, self._renew_ms)
            if seen == "dead":
                self._ended(session, "its key lapsed")
            elif seen == "suspect":
                client = renewing_client(replies[i * step + 1])
                if client is not None:  # unknown: wait for the key to lapse
                    suspects[session] = client
        if not suspects:
            return None
        ids = [str(client) for client in sorted(set(suspects.values()))]
        listed = self._redis.execute("CLIENT", "LIST", "ID", *ids)
        return listed.addCallbacks(self._confirmed, self._no_client_list, (suspects,))

    def _confirmed(self, reply: Reply, suspects: dict[str, int]) -> None:
        alive = client_ids(reply)
        for session, client in suspects.items():
            if client not in alive:
                self._ended(session, "both of its connections closed")

    def _no_client_list(self, reason: Failure) -> None:
        if not self._client_list_failed:
            self._client_list_failed = True
            log.warn(
                "CLIENT LIST ID failed ({r}): a killed leader is taken over only once its "
                "session key lapses",
                r=reason.getErrorMessage(),
            )

    def _ended(self, session: str, why: str) -> None:
        log.info("session {s} ended ({why}): taking over its leases", s=session, why=why)
        self._dead.set(session, None)

    def _failed(self, reason: Failure) -> None:
        log.debug("session check failed: {r}", r=reason.getErrorMessage())

    def _done(self, _: object) -> None:
        self._checking = False


def _numsub(reply: Reply) -> int | None:
    """The count of ``PUBSUB NUMSUB <channel>`` (``[channel, count]``), None if unreadable."""
    if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], int):
        return reply[1]
    return None
