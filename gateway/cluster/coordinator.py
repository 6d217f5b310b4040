"""ClusterCoordinator: one backend call per in-flight window across every gateway node.

For each call key the node's flight table hands us (once per node: identical calls on the
node joined its flight already), one Redis round trip (the ``decide`` script) picks the role:

* **cache / stale** (cache-mode methods): answer from the shared entry. A stale entry is
  served at once; if this call also won the lease it refreshes the entry in the background
  (registered with the flight table, so a drain waits for it).
* **lead**: we hold the lease ``{b}:K:lease`` = our token, with the next fencing number.
  Call the backend, renewing the lease every ``lease_ttl/3``; then one ``complete`` script
  writes ``{b}:K:result:<token>``, and - only if the lease is still ours - the cache entry
  (if the method and reply kind allow) and releases the lease; it publishes the notice on
  the bucket's ``done`` channel. Only then are our own callers answered, so a call made
  after that answer can never follow the finished call. A leader whose renewal fails is
  deposed: it still answers its own callers, but nothing it writes can replace what a newer
  leader cached.
* **follow**: another node holds the lease: :class:`~gateway.cluster.follower.Follower`.

What a failed leader shares: the backend's own answers always; a failure that is this
node's own trouble (overloaded, cannot reach the backend) never - followers decide again and
one of them leads (``contracts.shares_failure``). A lead cancelled by a drain publishes
"abandoned", which has the same effect at once.

While the command connection is down ``execute`` hands calls to the local ``fallback``
coordinator; a follower that loses it mid-wait falls back too. A lost subscription alone
only makes followers poll.
"""

from __future__ import annotations

import time

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.cluster import envelope as env
from gateway.cluster.completions import Completions
from gateway.cluster.decision import Decision, UnexpectedReply
from gateway.cluster.follower import Follower, GiveUp
from gateway.cluster.keys import KeySchema
from gateway.cluster.options import ClusterCounters, ClusterOptions
from gateway.cluster.session import SessionWatch, new_session
from gateway.cluster.steps import RedisSteps
from gateway.contracts import (
    BackendCall,
    BackendReply,
    Coordinator,
    MethodPolicy,
    NoSpawner,
    Outcome,
    Source,
    Spawner,
    shares_failure,
)
from gateway.errors import INTERNAL_ERROR, GatewayError, Origin
from gateway.primitives import DeferredPool
from gateway.reactors import as_clock
from gateway.redis.connection import RedisCommandError, RedisCommands, RedisUnavailable

log = Logger(namespace="gateway.cluster")

_REDIS_TROUBLE = (RedisUnavailable, RedisCommandError, UnexpectedReply)


class ClusterCoordinator:
    """Implements :class:`gateway.contracts.Coordinator` through Redis; see the module doc.

    ``redis``: the node's command connection (a started ``RedisConnector``);
    ``completions``: the node's single pub/sub listener (a started ``Completions``);
    ``fallback``: local-only coordinator used while Redis is down; ``clock``: the reactor;
    ``keys``: the node's KeySchema (default: one for ``options.prefix``); ``spawner``: the
    node's flight table, which background refreshes are registered with; ``session``: this
    process's session id (kept alive by the node's SessionKeeper; its leases carry it);
    ``per_slot``: the server is a Redis Cluster (a batch of steps may hold one slot only).
    """

    def __init__(
        self,
        redis: RedisCommands,
        completions: Completions,
        *,
        node_id: str,
        fallback: Coordinator,
        clock: IReactorTime,
        options: ClusterOptions | None = None,
        keys: KeySchema | None = None,
        spawner: Spawner | None = None,
        session: str | None = None,
        pubsub_counts: bool = True,
        per_slot: bool = False,
    ) -> None:
        self.options = options or ClusterOptions()
        self.node_id = node_id
        self.session = session or new_session(node_id)
        self.counters = ClusterCounters()
        self._redis = redis
        self._completions = completions
        self._fallback = fallback
        self._clock = as_clock(clock)
        self._reactor = clock
        self._spawner = spawner or NoSpawner()
        keys = keys or KeySchema(self.options.prefix)
        self._steps = RedisSteps(
            redis, self.options, keys, self.session, clock, node_id, per_slot=per_slot
        )
        self.sessions = SessionWatch(
            redis,
            keys,
            clock,
            self.options.session_ttl,
            self.options.session_check_interval,
            pubsub_counts,
        )
        self._follower = Follower(
            self._steps, completions, self.sessions, clock, self.options, self._open
        )
        self._writes = DeferredPool(clock)  # complete() calls not yet answered
        self._announced: str | None = None  # last mode logged
        self._stopped = False
        redis.add_state_callback(self._redis_state)
        completions.add_state_callback(lambda _: self._announce(subscriber=True))

    @property
    def cluster_mode(self) -> bool:
        """True while the command connection is up (notices may still be down: see mode)."""
        return self._redis.is_up

    @property
    def mode(self) -> str:
        """``cluster``, ``cluster-polling`` (no subscription: followers poll) or ``local``."""
        if not self._redis.is_up:
            return "local"
        return "cluster" if self._completions.is_up else "cluster-polling"

    @property
    def script_reloads(self) -> int:
        return self._steps.script_reloads

    def heartbeat_fields(self) -> dict[str, float | str]:
        """Extra fields for this node's heartbeat hash."""
        return {
            "hmac_rejects": float(self.counters.hmac_rejects + self.counters.expired_rejects),
            "deposed": float(self.counters.deposed),
            "redis_mode": self.mode,
            "session": self.session,
        }

    def stop(self) -> Deferred[None]:
        """Node shutdown: new calls go to the fallback, no "redis down" is logged, and the
        returned Deferred fires once the Redis writes underway (an abandoned lead's notice)
        are answered, at most ``reply_timeout`` from now."""
        self._stopped = True
        self.sessions.stop()
        waiting = self._writes.notify_when_empty(timeout=self.options.reply_timeout)
        return waiting.addErrback(lambda _: None)

    def execute(
        self, key: str, policy: MethodPolicy, call_backend: BackendCall
    ) -> Deferred[Outcome]:
        if self._stopped or not self.cluster_mode:
            self._announce()
            return self._fallback.execute(key, policy, call_backend)
        return Deferred.fromCoroutine(self._execute(key, policy, call_backend))

    def cached(self, key: str, policy: MethodPolicy) -> Outcome | None:
        # The shared cache is in Redis: nothing is known without a round trip, unless the
        # node is on its local fallback.
        if self._stopped or not self.cluster_mode:
            return self._fallback.cached(key, policy)
        return None

    # -- roles ------------------------------------------------------------------------

    async def _execute(self, key: str, policy: MethodPolicy, call_backend: BackendCall) -> Outcome:
        dropped = False  # an unusable cache entry was dropped once already
        handed_back = False  # a leader we followed gave the call back (see _lead)
        decision = Decision("again")
        while True:
            try:
                if decision.kind == "again":
                    decision = await self._steps.decide(key, policy)
                    continue
                if decision.kind in ("cache", "stale"):
                    source = Source.CACHE if decision.kind == "cache" else Source.STALE
                    outcome = self._from_entry(key, decision.entry, source)
                    if outcome is not None:
                        return outcome
                    if dropped:  # rewritten unusable again at once (a node with another secret?)
                        return await self._give_up("solo", key, policy, call_backend)
                    # An entry no node can trust would defeat dedupe for its whole TTL: drop it
                    # (only if unchanged) and decide again, so one leader rewrites it.
                    dropped = True
                    await self._steps.drop_entry(key, decision.entry)
                    decision = Decision("again")
                    continue
                if decision.kind == "stale_lead":
                    outcome = self._from_entry(key, decision.entry, Source.STALE)
                    if outcome is None:  # unusable entry: refresh it in the foreground instead
                        return await self._lead(key, policy, call_backend, decision)
                    refresh = Deferred.fromCoroutine(
                        self._lead(key, policy, call_backend, decision)
                    )
                    refresh.addErrback(
                        lambda f: log.debug("refresh failed: {f}", f=f.getErrorMessage())
                    )
                    self._spawner.spawn(key, refresh)
                    return outcome
                if decision.kind == "lead":
                    return await self._lead(key, policy, call_backend, decision, handed_back)
                # follow, until an answer, a decision of our own, or giving up
                step = await self._follower.follow(key, policy, decision)
            except _REDIS_TROUBLE:
                return await self._give_up("fallback", key, policy, call_backend)
            if isinstance(step, Outcome):
                return step
            if isinstance(step, str):
                return await self._give_up(step, key, policy, call_backend)
            if step.kind == "lead":
                self.counters.takeovers += 1
            if step.kind == "again":
                handed_back = True
            decision = step

    async def _lead(
        self,
        key: str,
        policy: MethodPolicy,
        call_backend: BackendCall,
        decision: Decision,
        second_try: bool = False,
    ) -> Outcome:
        """Call the backend as the lease holder and share the outcome.

        ``second_try``: this call was handed back to us by an earlier leader. An ambiguous
        failure (timeout, connection lost mid-call) of an idempotent call is handed back
        once, as the first leader's own network may be at fault; if ours fails that way
        too, it is shared, so a hung backend costs two calls and two timeouts, not one of
        each per node.
        """
        self.counters.leads += 1
        token, fence = decision.token, decision.fence
        renewer = self._steps.renewer(key, token, on_deposed=lambda: self._deposed(key))
        try:
            reply: BackendReply = await maybeDeferred(call_backend)
        except CancelledError:
            # Abandoned (the node drains): followers take over now rather than wait out the
            # lease. Not awaited - a cancelled coroutine must finish now; the node's stop
            # waits for the write instead.
            self._complete(key, policy, env.Envelope.skip(token, "abandoned", fence), False)
            raise
        except Exception as exc:
            ambiguous = isinstance(exc, GatewayError) and exc.origin is Origin.AMBIGUOUS
            if shares_failure(exc, policy) or (second_try and ambiguous):
                if isinstance(exc, GatewayError):
                    code, message = exc.code, exc.message
                else:
                    code, message = INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"
                shared = env.Envelope.error(token, code, message, fence)
            else:
                # This node's own trouble: another node may well succeed.
                self.counters.handed_back += 1
                shared = env.Envelope.skip(token, "local_error", fence)
            await self._complete(key, policy, shared, False)
            raise
        finally:  # a renewal racing complete() is harmless: RENEW only extends our own lease
            renewer.stop()
        if len(reply.message) > self.options.max_shared_bytes:
            shared, cacheable = env.Envelope.skip(token, "too_large", fence), False
        else:
            shared = env.Envelope.ok(token, reply, fence)
            cacheable = policy.may_cache(reply)
        if await self._complete(key, policy, shared, cacheable) is False and not renewer.deposed:
            self._deposed(key)  # lost the lease between the last renewal and complete
        return Outcome(reply, Source.BACKEND)

    def _complete(
        self, key: str, policy: MethodPolicy, shared: env.Envelope, cacheable: bool
    ) -> Deferred[bool | None]:
        return self._writes.add(self._steps.complete(key, policy, shared, cacheable))

    def _deposed(self, key: str) -> None:
        self.counters.deposed += 1
        log.info(
            "lost the lease of {key} while calling the backend (paused or partitioned?): "
            "answering this node's callers, caching nothing",
            key=key,
        )

    # -- envelopes ----------------------------------------------------------------------

    def _open(self, key: str, data: bytes) -> env.Envelope | None:
        try:
            return env.decode(
                data,
                key,
                self.options.hmac_secret,
                now_ms=int(time.time() * 1000),
                max_skew_ms=int(self.options.max_clock_skew * 1000),
            )
        except env.EnvelopeExpired as exc:
            self.counters.expired_rejects += 1
            log.warn("rejected a shared result for {key}: {exc} (replayed?)", key=key, exc=exc)
        except env.EnvelopeRejected:
            self.counters.hmac_rejects += 1
            log.warn("rejected a shared result for {key}: bad HMAC signature", key=key)
        except env.EnvelopeError as exc:
            log.warn("ignored a malformed shared result for {key}: {exc}", key=key, exc=exc)
        return None

    def _from_entry(self, key: str, data: bytes, source: Source) -> Outcome | None:
        opened = self._open(key, data)
        if opened is None or opened.reply is None:
            return None
        return Outcome(opened.reply, source)

    # -- giving up -----------------------------------------------------------------------

    async def _give_up(
        self, how: GiveUp, key: str, policy: MethodPolicy, call_backend: BackendCall
    ) -> Outcome:
        if how == "fallback":
            return await self._fallback.execute(key, policy, call_backend)
        return Outcome(await maybeDeferred(call_backend), Source.BACKEND)

    # -- mode -----------------------------------------------------------------------------

    def _redis_state(self, up: bool) -> None:
        if up:
            self._steps.preload()  # so the first calls after (re)connecting skip NOSCRIPT
        else:
            # Followers wait on notices the subscriber may still deliver, but they could
            # not fetch a non-inlined result nor poll: wake them to fall back now.
            self._completions.fail_all(RedisUnavailable("redis connection lost"))
        self._announce()

    def _announce(self, subscriber: bool = False) -> None:
        mode = self.mode
        if mode == self._announced or self._stopped:
            return
        if subscriber and mode == "local" and self._announced is None:
            # At start the subscriber may connect before the command connection: that is
            # still connecting, not an outage (a call that falls back announces one).
            return
        if mode == "cluster":
            log.info("redis up: cluster mode (node {node})", node=self.node_id)
        elif mode == "local":
            log.warn("redis down: local-only coalescing (node {node})", node=self.node_id)
        elif self._announced == "cluster":  # not while connecting: the subscription follows
            log.warn(
                "redis pub/sub down: followers poll for results (node {node})", node=self.node_id
            )
        self._announced = mode
