"""A follower waiting for another node's leader of one call key: the whole state machine.

State: FOLLOWING(T, D) - waiting for the outcome of leader ``T`` (a lease token) until
deadline ``D``. ``D`` is ``follow_limit`` (``policy.timeout + lease_ttl``, or the
``follower_wait`` option) after this node started following *that* leader, and is set
afresh whenever the followed leader changes: a takeover leader gets the same time as the
first one, so its followers never give up on it just because an earlier leader was slow.

While FOLLOWING, the follower waits for ``T``'s notice up to the lease's remaining time (plus
a margin); while notices cannot arrive (the subscription is down) it polls every
``poll_interval`` instead, over the command connection. Meanwhile the node's
:class:`~gateway.cluster.session.SessionWatch` watches ``T``'s session: a leader that died
is noticed in well under a second, however long ``lease_ttl`` is. Each wake-up ends in one
of:

=========================================  =============================================
what it learns                             next
=========================================  =============================================
``T``'s outcome (notice or poll)           ok: ANSWERED; error: the shared failure raised;
                                           abandoned / local_error: REDECIDE ("again");
                                           too_large: SOLO
poll: ``T`` still holds the lease          FOLLOWING(T, D) - renewed, keep waiting
poll: another leader ``T2`` holds it       FOLLOWING(T2, now + follow_limit)
poll: the lease was free and is now ours   LEAD (``T`` died; this node takes over)
``T``'s session ended                      poll at once, freeing ``T``'s lease: LEAD or
                                           FOLLOWING(T2) if another follower was quicker
poll: a cache / stale entry                that decision (the coordinator serves it)
``D`` passed                               SOLO (call the backend without coordination)
a Redis command failed                     FALLBACK (the node's local coordinator)
=========================================  =============================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from gateway.cluster import envelope as env
from gateway.cluster.completions import Completions, NoticesLost
from gateway.cluster.decision import Decision
from gateway.cluster.lease import NoticeListener
from gateway.cluster.options import ClusterOptions
from gateway.cluster.session import SessionWatch, session_of
from gateway.cluster.steps import RedisSteps
from gateway.contracts import MethodPolicy, Outcome, Source
from gateway.errors import RemoteCallFailed
from gateway.reactors import as_clock

GiveUp = Literal["solo", "fallback"]  # call the backend directly / through the fallback
FollowEnd = Outcome | Decision | GiveUp
Opener = Callable[[str, bytes], "env.Envelope | None"]  # (key, bytes) -> envelope if usable


class Follower:
    """Runs FOLLOWING(T, D) for one call of this node (see the module docstring)."""

    def __init__(
        self,
        steps: RedisSteps,
        completions: Completions,
        sessions: SessionWatch,
        clock: IReactorTime,
        options: ClusterOptions,
        opener: Opener,
    ) -> None:
        self._steps = steps
        self._completions = completions
        self._sessions = sessions
        self._reactor = clock
        self._clock = as_clock(clock)
        self._options = options
        self._open = opener

    def follow_limit(self, policy: MethodPolicy) -> float:
        """How long one leader is followed before this node calls the backend itself."""
        if self._options.follower_wait is not None:
            return self._options.follower_wait
        return policy.timeout + self._options.lease_ttl

    async def follow(self, key: str, policy: MethodPolicy, decision: Decision) -> FollowEnd:
        """Follow ``decision.token`` and whoever takes over from it, until an end state.

        Redis trouble propagates (the coordinator falls back).
        """
        token = decision.token
        lease_ms = decision.lease_ms
        deadline = self._clock.seconds() + self.follow_limit(policy)
        while True:
            step = await self._follow_leader(key, policy, token, lease_ms, deadline)
            if isinstance(step, Decision) and step.kind == "follow":
                if step.token != token:  # another node took over: a new leader, a new D
                    token = step.token
                    deadline = self._clock.seconds() + self.follow_limit(policy)
                lease_ms = step.lease_ms
                continue
            return step

    async def _follow_leader(
        self, key: str, policy: MethodPolicy, token: str, lease_ms: int, deadline: float
    ) -> FollowEnd:
        """Wait for leader ``token`` until its outcome, a changed lease, or ``deadline``."""
        listener = NoticeListener(self._completions.wait(key, token), self._reactor)
        leader_gone = self._sessions.watch(session_of(token))
        leader_gone.addCallbacks(lambda _: listener.interrupt(), lambda _: None)
        try:
            # Registered first, then one GET: a notice published before we listened is not
            # lost, because the result key outlives it (handoff_ttl).
            stored = await self._steps.result(key, token)
            if stored is not None:
                return self._outcome(key, token, stored)
            lease_ms = lease_ms or self._steps.lease_ms
            while True:
                left = deadline - self._clock.seconds()
                if left <= 0:
                    return "solo"
                if leader_gone.called:
                    pass  # poll now, freeing the dead leader's lease
                elif listener.has_failed:  # notices down: poll over the command connection
                    await self._sleep(min(left, self._options.poll_interval))
                elif await listener.wait(min(left, lease_ms / 1000 + self._options.poll_margin)):
                    notice = listener.result
                    if not isinstance(notice, Failure):
                        return await self._notice(key, token, notice)
                    if not isinstance(notice.value, NoticesLost):
                        notice.raiseException()  # the command connection is gone: fall back
                    continue  # only the subscription went down: poll from now on
                step = await self._steps.poll(key, policy, token, leader_gone.called)
                if step.kind == "result":
                    return self._outcome(key, token, step.entry)
                if step.kind != "follow" or step.token != token:
                    return step
                lease_ms = step.lease_ms or self._steps.lease_ms  # renewed: keep following
        finally:
            listener.cancel()
            leader_gone.cancel()

    async def _notice(self, key: str, token: str, notice: bytes | None) -> FollowEnd:
        if notice is None:  # too big to inline: fetch it
            stored = await self._steps.result(key, token)
            if stored is None:
                return "solo"  # expired already (handoff_ttl too short for this wait)
            notice = stored
        return self._outcome(key, token, notice)

    def _outcome(self, key: str, token: str, data: bytes) -> FollowEnd:
        opened = self._open(key, data)
        if opened is None or opened.token != token:
            return "solo"
        if opened.status == "error":
            raise RemoteCallFailed(opened.message, opened.code)
        if opened.reply is not None:
            return Outcome(opened.reply, Source.REMOTE)
        if opened.why in ("abandoned", "local_error"):
            return Decision("again")  # the leader gave the call back: decide again
        return "solo"  # too large to share: everyone calls for themselves

    def _sleep(self, seconds: float) -> Deferred[None]:
        return deferLater(self._reactor, seconds, lambda: None)
