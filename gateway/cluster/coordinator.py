"""ClusterCoordinator: one backend call per in-flight window across every gateway node.

For each call key the proxy hands us (once per node, after its local join), one Redis
round trip (the ``decide`` script) picks the role:

* **cache / stale** (cache-mode methods): answer from the shared entry. A stale entry is
  served at once; if this call also won the lease it refreshes the entry in the background.
* **lead**: we hold the lease ``{K}:lease`` = our token. Call the backend, renewing the
  lease every ``lease_ttl/3``; then one ``complete`` script writes ``{K}:result:<token>``,
  the cache entry (if the method and reply kind allow), publishes on ``{K}:done`` and
  releases the lease if it is still ours. Only then are our own callers answered, so a
  call made after that answer can never follow the finished call.
* **follow**: another node holds the lease. Register for the ``(K, token)`` notice, GET
  the result once (the notice may have come before we listened), then wait. After each
  lease period without a notice, ``poll`` (result-or-decide in one script): the leader may
  have finished, renewed (keep following), or died (we may take over the lease).

Nobody waits forever: a follower gives up after ``follower_wait`` (default
``policy.timeout + lease_ttl``) and calls the backend itself; when Redis goes away every
waiting follower is woken and calls the backend at once; while Redis is down ``execute``
hands calls to the local ``fallback`` coordinator.
"""

from __future__ import annotations

from typing import Literal

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.cluster import envelope as env
from gateway.cluster.completions import Completions
from gateway.cluster.connection import RedisCommandError, RedisCommands, RedisUnavailable
from gateway.cluster.decision import Decision, UnexpectedReply
from gateway.cluster.keys import KeySchema
from gateway.cluster.lease import NoticeListener
from gateway.cluster.options import ClusterCounters, ClusterOptions
from gateway.cluster.steps import RedisSteps
from gateway.contracts import BackendCall, BackendReply, Coordinator, MethodPolicy, Outcome, Source
from gateway.errors import INTERNAL_ERROR, GatewayError, RemoteCallFailed
from gateway.reactors import as_clock

log = Logger(namespace="gateway.cluster")

_REDIS_TROUBLE = (RedisUnavailable, RedisCommandError, UnexpectedReply)
_GiveUp = Literal["solo", "fallback"]  # call the backend directly / through the fallback


class ClusterCoordinator:
    """Implements :class:`gateway.contracts.Coordinator` through Redis; see the module doc.

    ``redis``: the node's command connection (a started ``RedisConnector``);
    ``completions``: the node's single pub/sub listener (a started ``Completions``);
    ``fallback``: local-only coordinator used while Redis (or the subscription) is down;
    ``clock``: the reactor; ``keys``: the node's KeySchema (default: one for
    ``options.prefix``). ``counters`` (``hmac_rejects`` among them) are for metrics.
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
    ) -> None:
        self.options = options or ClusterOptions()
        self.node_id = node_id
        self.counters = ClusterCounters()
        self._redis = redis
        self._completions = completions
        self._fallback = fallback
        self._clock = as_clock(clock)
        self._reactor = clock
        keys = keys or KeySchema(self.options.prefix)
        self._steps = RedisSteps(redis, self.options, keys)
        self._announced: bool | None = None  # last mode logged: True cluster, False local
        self._stopped = False
        redis.add_state_callback(self._redis_state)
        completions.add_state_callback(lambda _: self._announce(self.cluster_mode))

    @property
    def cluster_mode(self) -> bool:
        """True while both the command connection and the subscription are up."""
        return self._redis.is_up and self._completions.is_up

    @property
    def script_reloads(self) -> int:
        return self._steps.script_reloads

    def heartbeat_fields(self) -> dict[str, float | str]:
        """Extra fields for this node's heartbeat hash."""
        return {
            "hmac_rejects": float(self.counters.hmac_rejects),
            "redis_mode": "cluster" if self.cluster_mode else "local",
        }

    def stop(self) -> None:
        """Node shutdown: new calls go to the fallback, and no "redis down" is logged."""
        self._stopped = True

    def execute(
        self, key: str, policy: MethodPolicy, call_backend: BackendCall
    ) -> Deferred[Outcome]:
        if self._stopped or not self.cluster_mode:
            self._announce(False)
            return self._fallback.execute(key, policy, call_backend)
        return Deferred.fromCoroutine(self._execute(key, policy, call_backend))

    # -- roles ------------------------------------------------------------------------

    async def _execute(self, key: str, policy: MethodPolicy, call_backend: BackendCall) -> Outcome:
        deadline = self._clock.seconds() + self._follow_limit(policy)
        try:
            decision = await self._steps.decide(key, policy)
        except _REDIS_TROUBLE:
            return await self._give_up("fallback", key, policy, call_backend)
        dropped = False
        while True:
            if decision.kind in ("cache", "stale"):
                source = Source.CACHE if decision.kind == "cache" else Source.STALE
                outcome = self._from_entry(key, decision.entry, source)
                if outcome is not None:
                    return outcome
                if dropped:  # rewritten unusable again at once (a node with another secret?)
                    return await self._give_up("solo", key, policy, call_backend)
                # An entry no node can trust would otherwise defeat dedupe for its whole TTL:
                # drop it (only if unchanged) and decide again, so one leader rewrites it.
                dropped = True
                try:
                    await self._steps.drop_entry(key, decision.entry)
                    decision = await self._steps.decide(key, policy)
                except _REDIS_TROUBLE:
                    return await self._give_up("fallback", key, policy, call_backend)
                continue
            if decision.kind == "stale_lead":
                outcome = self._from_entry(key, decision.entry, Source.STALE)
                if outcome is None:  # unusable entry: refresh it in the foreground instead
                    return await self._lead(key, policy, call_backend, decision.token)
                refresh = Deferred.fromCoroutine(
                    self._lead(key, policy, call_backend, decision.token)
                )
                refresh.addErrback(
                    lambda f: log.debug("refresh failed: {f}", f=f.getErrorMessage())
                )
                return outcome
            if decision.kind == "lead":
                return await self._lead(key, policy, call_backend, decision.token)
            # follow (possibly after an earlier follow that ended with a changed lease)
            step = await self._follow(key, policy, decision, deadline)
            if isinstance(step, Outcome):
                return step
            if isinstance(step, str):
                return await self._give_up(step, key, policy, call_backend)
            if step.kind == "lead":
                self.counters.takeovers += 1
            decision = step
            if step.kind == "again":  # the leader abandoned the call: decide afresh
                try:
                    decision = await self._steps.decide(key, policy)
                except _REDIS_TROUBLE:
                    return await self._give_up("fallback", key, policy, call_backend)

    async def _lead(
        self, key: str, policy: MethodPolicy, call_backend: BackendCall, token: str
    ) -> Outcome:
        self.counters.leads += 1
        renewer = self._steps.renewer(key, token, self._reactor)
        try:
            reply: BackendReply = await maybeDeferred(call_backend)
        except CancelledError:
            # Our callers are gone. Tell followers to decide again rather than wait out the
            # lease; not awaited, since a cancelled coroutine must finish now.
            self._steps.complete(key, policy, env.Envelope.skip(token, "abandoned"), False)
            raise
        except Exception as exc:
            if isinstance(exc, GatewayError):
                code, message = exc.code, exc.message
            else:
                code, message = INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"
            await self._steps.complete(key, policy, env.Envelope.error(token, code, message), False)
            raise
        finally:  # a renewal racing complete() is harmless: RENEW only extends our own lease
            renewer.stop()
        if len(reply.message) > self.options.max_shared_bytes:
            shared, cacheable = env.Envelope.skip(token, "too_large"), False
        else:
            shared, cacheable = env.Envelope.ok(token, reply), policy.may_cache(reply.kind)
        await self._steps.complete(key, policy, shared, cacheable)
        return Outcome(reply, Source.BACKEND)

    async def _follow(
        self, key: str, policy: MethodPolicy, decision: Decision, deadline: float
    ) -> Outcome | Decision | _GiveUp:
        """Follow ``decision.token``: an answer, a new decision (lease changed), or give up."""
        token = decision.token
        listener = NoticeListener(self._completions.wait(key, token), self._reactor)
        try:
            # Registered first, then one GET: a notice published before we listened is not
            # lost, because the result key outlives it (handoff_ttl).
            stored = await self._steps.result(key, token)
            if stored is not None:
                return self._handoff(key, token, stored)
            lease_ms = decision.lease_ms or self._steps.lease_ms
            while True:
                left = deadline - self._clock.seconds()
                if left <= 0:
                    return "solo"
                wait = min(left, lease_ms / 1000 + self.options.poll_margin)
                if await listener.wait(wait):
                    return await self._notice(key, listener, token)
                step = await self._steps.poll(key, policy, following=token)
                if step.kind == "result":
                    return self._handoff(key, token, step.entry)
                if step.kind != "follow" or step.token != token:
                    return step
                lease_ms = step.lease_ms or self._steps.lease_ms  # renewed: keep following
        except _REDIS_TROUBLE:
            return "fallback"
        finally:
            listener.cancel()

    async def _notice(
        self, key: str, listener: NoticeListener, token: str
    ) -> Outcome | Decision | _GiveUp:
        notice = listener.result
        if isinstance(notice, Failure):  # Redis went away: don't wait, call the backend now
            return "fallback"
        if notice is None:  # too big to inline: fetch it
            stored = await self._steps.result(key, token)
            if stored is None:
                return "solo"  # expired already (handoff_ttl too short for this wait)
            notice = stored
        return self._handoff(key, token, notice)

    # -- envelopes ----------------------------------------------------------------------

    def _open(self, key: str, data: bytes) -> env.Envelope | None:
        try:
            return env.decode(data, key, self.options.hmac_secret)
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

    def _handoff(self, key: str, token: str, data: bytes) -> Outcome | Decision | _GiveUp:
        opened = self._open(key, data)
        if opened is None or opened.token != token:
            return "solo"
        if opened.status == "error":
            raise RemoteCallFailed(opened.message, opened.code)
        if opened.reply is not None:
            return Outcome(opened.reply, Source.REMOTE)
        if opened.why == "abandoned":  # the leader's callers left: decide again
            return Decision("again")
        return "solo"  # too large to share: everyone calls for themselves

    # -- giving up -----------------------------------------------------------------------

    async def _give_up(
        self, how: _GiveUp, key: str, policy: MethodPolicy, call_backend: BackendCall
    ) -> Outcome:
        if how == "fallback":
            return await self._fallback.execute(key, policy, call_backend)
        return Outcome(await maybeDeferred(call_backend), Source.BACKEND)

    def _follow_limit(self, policy: MethodPolicy) -> float:
        if self.options.follower_wait is not None:
            return self.options.follower_wait
        return policy.timeout + self.options.lease_ttl

    # -- mode -----------------------------------------------------------------------------

    def _redis_state(self, up: bool) -> None:
        if up:
            self._steps.preload()  # so the first calls after (re)connecting skip NOSCRIPT
        else:
            # Followers wait on notices the subscriber may still deliver, but they could
            # not fetch a non-inlined result nor poll: wake them to call the backend now.
            self._completions.fail_all(RedisUnavailable("redis connection lost"))
        self._announce(self.cluster_mode)

    def _announce(self, mode: bool) -> None:
        if mode == self._announced or self._stopped:
            return
        if mode:
            log.info("redis up: cluster mode (node {node})", node=self.node_id)
        elif self._announced is not None or not self._redis.is_up:
            log.warn("redis down: local-only coalescing (node {node})", node=self.node_id)
        self._announced = mode
