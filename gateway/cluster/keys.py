"""The Redis key schema shared by every gateway node (and by ``gateway status``).

All keys of one call key ``K`` carry the hash tag ``{K}`` so a Redis Cluster keeps them in
one slot: the scripts touch the lease, the result and the cache entry in one atomic step.

====================================  ==========  =========================================
key                                   type        meaning
====================================  ==========  =========================================
``<prefix>{K}:lease``                 string      token of the node calling the backend
``<prefix>{K}:result:<token>``        string      envelope handed to that leader's followers
``<prefix>{K}:cache``                 string      envelope served until ttl (+ stale_ttl)
``<prefix>{K}:done``                  channel     "leader finished" notices (PSUBSCRIBE)
``<prefix>node:<node_id>``            hash        one node's counters (heartbeat)
``<prefix>nodes``                     zset        node ids scored by last heartbeat time
====================================  ==========  =========================================
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "gw:"

# Characters PSUBSCRIBE treats as glob syntax; a prefix containing them must be escaped in
# the pattern or nodes would subscribe to more (or fewer) channels than they publish on.
_GLOB_CHARS = frozenset("*?[]\\")


@dataclass(frozen=True)
class KeySchema:
    """Builds (and, for channels, parses) every Redis name a node uses."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        # A brace in the prefix would become the hash tag instead of {K}.
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"key prefix may not contain braces: {self.prefix!r}")

    def _base(self, key: str) -> str:
        if not key:
            raise ValueError("call key must not be empty")
        return f"{self.prefix}{{{key}}}"

    def lease(self, key: str) -> str:
        return f"{self._base(key)}:lease"

    def result(self, key: str, token: str) -> str:
        return f"{self._base(key)}:result:{token}"

    def cache(self, key: str) -> str:
        return f"{self._base(key)}:cache"

    def done(self, key: str) -> str:
        return f"{self._base(key)}:done"

    def done_pattern(self) -> str:
        """The one PSUBSCRIBE pattern that matches every call's ``done`` channel."""
        escaped = "".join(f"\\{c}" if c in _GLOB_CHARS else c for c in self.prefix)
        return f"{escaped}{{*}}:done"

    def key_of_done(self, channel: str) -> str | None:
        """The call key of a ``done`` channel name, or None for a channel that is not one."""
        head, tail = f"{self.prefix}{{", "}:done"
        if not (channel.startswith(head) and channel.endswith(tail)):
            return None
        key = channel[len(head) : -len(tail)]
        return key or None

    def node(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def nodes(self) -> str:
        return f"{self.prefix}nodes"
