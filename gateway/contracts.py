"""The boundary between the proxy and whatever coordinates calls (local or Redis).

The proxy hands every coalescable call to a :class:`Coordinator`. ``proxy`` and ``cluster``
may not import each other, so the types they exchange live here, one layer below both.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol

from twisted.internet.defer import Deferred

from gateway.errors import GatewayError, Origin
from gateway.thrift.appexc import reply_kind
from gateway.thrift.kinds import ProtocolKind
from gateway.thrift.kinds import ReplyKind as ReplyKind  # re-exported: part of the contract
from gateway.thrift.message import MessageHeader

Mode = Literal["coalesce", "cache", "passthrough"]


@dataclass(frozen=True)
class BackendReply:
    """One whole, unframed Thrift reply message exactly as the backend sent it.

    ``kind`` is worked out from the bytes only when asked (caching and sharing need it;
    passing a reply through does not). ``header`` is the reply's parsed header when the
    upstream connection has it already (it parsed it to match the seqid): re-encoding the
    reply for the caller then needs no second parse.
    """

    message: bytes
    protocol: str  # a gateway.thrift ProtocolKind value: "binary", "binary-nonstrict", "compact"
    known_kind: ReplyKind | None = None
    header: MessageHeader | None = field(default=None, compare=False, repr=False)

    @cached_property  # asked by may_cache and by the envelope: decoded once
    def kind(self) -> ReplyKind:
        if self.known_kind is not None:
            return self.known_kind
        return reply_kind(self.message, ProtocolKind(self.protocol), header=self.header)


@dataclass(frozen=True)
class MethodPolicy:
    """How the gateway treats calls to one method (docs/configuration.md, [methods.<name>])."""

    mode: Mode = "coalesce"
    ttl: float = 0.0  # seconds a successful reply is served from cache (mode="cache")
    stale_ttl: float = 0.0  # grace after ttl: serve stale while one refresh runs
    cache_exceptions: bool = False  # also cache declared Thrift exceptions
    idempotent: bool = False  # may be retried on connection failures and hedged
    timeout: float = 30.0  # per-call backend timeout, seconds
    exclude_fields: frozenset[int] = field(default_factory=frozenset)
    # THeader info headers that are part of the call key (names as sent, case-sensitive).
    key_headers: frozenset[str] = field(default_factory=frozenset)

    def may_cache(self, reply: BackendReply) -> bool:
        """True when ``reply`` may be stored as a cache entry (its kind is read only then)."""
        if self.mode != "cache" or self.ttl <= 0:
            return False
        kind = reply.kind
        if kind is ReplyKind.SUCCESS:
            return True
        return kind is ReplyKind.DECLARED_EXCEPTION and self.cache_exceptions


class Source(enum.Enum):
    """Where a caller's answer came from; the proxy counts metrics by it."""

    BACKEND = "backend"  # this node called the backend
    CACHE = "cache"  # a fresh cache entry
    STALE = "stale"  # a stale entry served during the grace period
    REMOTE = "remote"  # another node's leader made the call; we followed it


@dataclass(frozen=True)
class Outcome:
    reply: BackendReply
    source: Source


BackendCall = Callable[[], "Deferred[BackendReply]"]


def shares_failure(exc: BaseException, policy: MethodPolicy) -> bool:
    """Whether the callers following this call on other nodes get this failure too.

    What the backend answered (replies, declared exceptions, its own TApplicationException -
    none of which is a failure here) is always shared. A failure that is this node's own
    trouble (its queue is full, it cannot reach the backend, a bug) is not: followers decide
    again and one of them calls the backend. A failure after the call was sent (timeout,
    connection lost mid-call) may mean the backend did the work: shared for non-idempotent
    methods, so nobody repeats it; for idempotent ones followers decide again.
    """
    origin = exc.origin if isinstance(exc, GatewayError) else Origin.LOCAL
    if origin is Origin.BACKEND:
        return True
    if origin is Origin.AMBIGUOUS:
        return not policy.idempotent
    return False


class Spawner(Protocol):
    """Where a coordinator registers background work of its own (a stale entry's refresh)."""

    def spawn(self, key: str, work: Deferred[Any]) -> None: ...


class NoSpawner:
    """For coordinators used without a flight table (tests): background work is not tracked."""

    def spawn(self, key: str, work: Deferred[Any]) -> None:
        pass


class Coordinator(Protocol):
    """Decides, for one call key, whether to call the backend, follow, or serve a cache entry.

    ``call_backend`` performs the real backend call; a coordinator calls it at most once per
    ``execute`` and may not call it at all. Failures of ``call_backend`` reach the returned
    Deferred (as ``GatewayError`` subclasses) and are never cached.
    """

    def execute(
        self, key: str, policy: MethodPolicy, call_backend: BackendCall
    ) -> Deferred[Outcome]: ...

    def cached(self, key: str, policy: MethodPolicy) -> Outcome | None:
        """A fresh cache entry for ``key`` this node holds now, without waiting for anything
        (None: ask :meth:`execute`, which may find one elsewhere). Only asked in cache mode;
        a hit answers the call with no flight at all."""
        ...
