"""The protocol's Redis round trips for one node: names, script arguments, envelopes.

Each method is one round trip (EVALSHA, or one GET/MGET), so the coordinator reads as the
protocol itself and this module is where the wire format of a step lives. ``decide`` and
``complete``, the two steps of every flight, and a follower's ``result`` share their round
trip with the other flights of the same reactor turn (batch.py): one EVALSHA (or MGET) per
turn, per slot in a Redis Cluster.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.cluster import envelope as env
from gateway.cluster.batch import BatchedScript, ScriptBatcher
from gateway.cluster.decision import Decision, parse_decision
from gateway.cluster.keys import KeySchema
from gateway.cluster.lease import LeaseRenewer
from gateway.cluster.options import ClusterOptions
from gateway.cluster.scripts import (
    COMPLETE,
    COMPLETE_ARGS,
    COMPLETE_KEYS,
    DECIDE,
    DECIDE_ARGS,
    DECIDE_KEYS,
    DROP,
    POLL,
    ScriptRunner,
)
from gateway.contracts import MethodPolicy
from gateway.reactors import as_clock
from gateway.redis.connection import Arg, RedisCommands

log = Logger(namespace="gateway.cluster")

_DECIDE = BatchedScript(DECIDE, DECIDE_KEYS, DECIDE_ARGS)
_COMPLETE = BatchedScript(COMPLETE, COMPLETE_KEYS, COMPLETE_ARGS)


class RedisSteps:
    """``decide``, ``poll``, ``result``, ``complete`` and lease renewal for call keys.

    ``per_slot``: the server is a Redis Cluster, so a batch holds the steps of one slot.
    """

    def __init__(
        self,
        redis: RedisCommands,
        options: ClusterOptions,
        keys: KeySchema,
        session: str,
        clock: IReactorTime,
        node_id: str = "",
        per_slot: bool = False,
    ) -> None:
        self._redis = redis
        self._options = options
        self._keys = keys
        self._session = session
        self._node_id = node_id or session.rpartition(".")[0]
        self._reactor = clock
        self._clock = as_clock(clock)
        self._scripts = ScriptRunner(redis)
        self.batcher = ScriptBatcher(redis, self._scripts, clock, per_slot=per_slot)
        self.lease_ms = max(1, int(options.lease_ttl * 1000))
        self._handoff_ms = max(1, int(options.handoff_ttl * 1000))
        # The fencing counter outlives any lease plus the results read after it.
        self._fence_ms = self.lease_ms + self._handoff_ms

    @property
    def script_reloads(self) -> int:
        return self._scripts.reloads

    def preload(self) -> Deferred[None]:
        return self._scripts.preload()

    async def decide(self, key: str, policy: MethodPolicy) -> Decision:
        """cache | stale | stale_lead | follow | lead (see scripts.DECIDE)."""
        args = self._decide_args(key, policy, count_follower=True)
        return parse_decision(await self.batcher.run(_DECIDE, self._decide_keys(key), args))

    async def poll(
        self, key: str, policy: MethodPolicy, following: str, leader_gone: bool = False
    ) -> Decision:
        """The followed leader's result if it is there (kind ``result``), else ``decide``.

        ``leader_gone``: the followed leader's session ended; its lease is freed (if it still
        holds it) so that this call may take over at once.
        """
        keys = [*self._decide_keys(key), self._keys.result(key, following)]
        args = [
            *self._decide_args(key, policy, count_follower=False),
            following if leader_gone else "",
            following,
        ]
        return parse_decision(await self._scripts.run(POLL, keys, args))

    async def result(self, key: str, token: str) -> bytes | None:
        """The envelope leader ``token`` left for its followers, if it is (still) there."""
        stored = await self.batcher.get(self._keys.result(key, token))
        return stored if isinstance(stored, bytes) else None

    async def drop_entry(self, key: str, entry: bytes) -> None:
        """Delete the cache entry if it is still exactly ``entry`` (one we could not use)."""
        await self._scripts.run(DROP, [self._keys.cache(key)], [entry])

    def complete(
        self, key: str, policy: MethodPolicy, shared: env.Envelope, cacheable: bool
    ) -> Deferred[bool | None]:
        """Store, cache (if ``cacheable``), announce, release; never fails.

        Fires with True if the lease was still ours (cache written if asked, lease released),
        False if we had been deposed (only the result for our own followers was written),
        None if Redis could not be reached. A leader answers its own callers in every case;
        its followers then find no result and poll, take over or give up on their own.
        """
        cache_ms = int((policy.ttl + policy.stale_ttl) * 1000) if cacheable else 0
        now_ms = int(self._clock.seconds() * 1000)
        expires_ms = now_ms + max(self._handoff_ms, cache_ms)
        data = env.encode(
            dataclasses.replace(shared, expires_ms=expires_ms), key, self._options.hmac_secret
        )
        inline = "1" if len(data) <= self._options.inline_bytes else "0"
        keys = [
            self._keys.lease(key),
            self._keys.result(key, shared.token),
            self._keys.cache(key),
            self._keys.done(key),
            self._keys.inflight(key),
            self._keys.flight(key),
        ]
        args: list[Arg] = [shared.token, data, self._handoff_ms, cache_ms, key, inline]

        def failed(reason: Failure) -> None:
            log.debug("result not written for {key}: {r}", key=key, r=reason.getErrorMessage())

        return self.batcher.run(_COMPLETE, keys, args).addCallbacks(lambda r: r == 1, failed)

    def renewer(
        self, key: str, token: str, on_deposed: Callable[[], None] | None = None
    ) -> LeaseRenewer:
        """A started renewer extending ``token``'s lease every ``lease_ttl / 3``."""
        interval = max(0.01, self._options.lease_ttl / 3)
        keys = [self._keys.lease(key), self._keys.flight(key)]
        renewer = LeaseRenewer(
            self._scripts, self._reactor, keys, token, self.lease_ms, interval, on_deposed
        )
        return renewer.start()

    def new_token(self) -> str:
        """A lease token: ``<session>/<random>``, so a lease's holder can be read off it."""
        return f"{self._session}/{uuid.uuid4().hex[:16]}"

    def _decide_keys(self, key: str) -> list[str]:
        k = self._keys
        return [k.lease(key), k.cache(key), k.fence(key), k.inflight(key), k.flight(key)]

    def _decide_args(self, key: str, policy: MethodPolicy, count_follower: bool) -> list[Arg]:
        want_cache = policy.mode == "cache" and policy.ttl > 0
        stale_ms = int(policy.stale_ttl * 1000)
        # A fresh token per decision: it only becomes a lease if this call gets to lead.
        return [
            "1" if want_cache else "0",
            stale_ms,
            self.new_token(),
            self.lease_ms,
            self._fence_ms,
            key,
            self._node_id,
            "1" if count_follower else "0",
        ]
