"""The Redis key schema shared by every gateway node (and by ``gateway status``).

Call keys are spread over :data:`BUCKETS` buckets (``b`` = two hex digits, from a CRC-32 of
the call key ``K``), and every key of a call carries its bucket as the hash tag ``{b}``. So
the scripts, which touch a call's lease, fence, result and cache entry in one atomic step,
are single-slot in a Redis Cluster, and so are per-bucket keys (the ``done`` channel, the
in-flight index) that the same scripts update.

====================================  ==========  =========================================
key                                   type        meaning
====================================  ==========  =========================================
``<prefix>{b}:K:lease``               string      token of the node calling the backend
``<prefix>{b}:K:fence``               string      fencing number: +1 per new leadership
``<prefix>{b}:K:result:<token>``      string      envelope handed to that leader's followers
``<prefix>{b}:K:cache``               string      envelope served until ttl (+ stale_ttl)
``<prefix>{b}:K:flight``              hash        node, token, fence, followers of the leader
``<prefix>{b}:inflight``              zset        call keys led now, scored by start time
``<prefix>{b}:done``                  channel     "leader finished" notices of the bucket
``<prefix>session:<session>``         string      a node process's liveness (short expiry)
``<prefix>alive:<session>``           channel     subscribed by that process while it lives
``<prefix>node:{<node_id>}``          hash        one node's counters (heartbeat)
``<prefix>nodes``                     zset        node ids scored by last heartbeat time
====================================  ==========  =========================================
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

DEFAULT_PREFIX = "gw:"
BUCKETS = 64

# Characters PSUBSCRIBE treats as glob syntax; a prefix containing them must be escaped in
# the pattern or nodes would subscribe to more (or fewer) channels than they publish on.
_GLOB_CHARS = frozenset("*?[]\\")


@functools.lru_cache(maxsize=8192)
def bucket_of(key: str) -> str:
    """The bucket of call key ``key``: ``"00"`` .. ``"3f"``.

    Cached: one call's steps name its keys a dozen times (lease, fence, cache, result,
    channel, index entry), and a str's hash is cached by Python, a CRC-32 is not.
    """
    return f"{zlib.crc32(key.encode('utf-8')) % BUCKETS:02x}"


def all_buckets() -> list[str]:
    return [f"{b:02x}" for b in range(BUCKETS)]


@dataclass(frozen=True)
class KeySchema:
    """Builds (and, for channels, parses) every Redis name a node uses."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        # A brace in the prefix would become the hash tag instead of {b}.
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"key prefix may not contain braces: {self.prefix!r}")

    def _base(self, key: str) -> str:
        if not key:
            raise ValueError("call key must not be empty")
        return f"{self.prefix}{{{bucket_of(key)}}}:{key}"

    def lease(self, key: str) -> str:
        return f"{self._base(key)}:lease"

    def fence(self, key: str) -> str:
        return f"{self._base(key)}:fence"

    def result(self, key: str, token: str) -> str:
        return f"{self._base(key)}:result:{token}"

    def cache(self, key: str) -> str:
        return f"{self._base(key)}:cache"

    def flight(self, key: str) -> str:
        return f"{self._base(key)}:flight"

    def inflight(self, key: str) -> str:
        """The in-flight index of ``key``'s bucket."""
        return f"{self.prefix}{{{bucket_of(key)}}}:inflight"

    def done(self, key: str) -> str:
        """The notice channel of ``key``'s bucket."""
        return f"{self.prefix}{{{bucket_of(key)}}}:done"

    def done_pattern(self) -> str:
        """The one PSUBSCRIBE pattern that matches every bucket's ``done`` channel."""
        escaped = "".join(f"\\{c}" if c in _GLOB_CHARS else c for c in self.prefix)
        return f"{escaped}{{*}}:done"

    def is_done(self, channel: str) -> bool:
        """Whether ``channel`` is one of this schema's ``done`` channels."""
        head, tail = f"{self.prefix}{{", "}:done"
        return channel.startswith(head) and channel.endswith(tail)

    def session(self, session: str) -> str:
        return f"{self.prefix}session:{session}"

    def alive(self, session: str) -> str:
        """The channel a node process stays subscribed to while it lives."""
        return f"{self.prefix}alive:{session}"

    def node(self, node_id: str) -> str:
        """A node's counters hash; the node id is its hash tag (history stream alike)."""
        return f"{self.prefix}node:{{{node_id}}}"

    def nodes(self) -> str:
        return f"{self.prefix}nodes"
