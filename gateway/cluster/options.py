"""Tunables and counters of the cluster coordinator."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.cluster.keys import DEFAULT_PREFIX


@dataclass(frozen=True)
class ClusterOptions:
    """How a node coordinates through Redis (all nodes of a cluster should agree)."""

    prefix: str = DEFAULT_PREFIX  # every Redis name starts with it
    lease_ttl: float = 5.0  # seconds a leader's lease lives unless renewed (every ttl/3)
    handoff_ttl: float = 30.0  # seconds a leader's result stays readable by its followers
    hmac_secret: bytes | None = field(default=None, repr=False)  # sign shared results
    max_shared_bytes: int = 1 << 20  # larger replies are not shared (followers call)
    inline_bytes: int = 64 << 10  # envelopes up to this size ride in the done notice
    follower_wait: float | None = None  # per followed leader; None: policy.timeout + lease_ttl
    poll_margin: float = 0.02  # seconds past the lease's expiry before a follower polls
    poll_interval: float = 0.1  # seconds between a follower's polls while notices are down
    reply_timeout: float = 1.0  # seconds Redis has to answer a command
    session_ttl: float = 1.0  # seconds a node's session outlives its last renewal
    session_check_interval: float = 0.1  # seconds between checks of followed leaders' sessions
    max_clock_skew: float = 10.0  # seconds a signed envelope is still accepted past its expiry

    def __post_init__(self) -> None:
        for name in ("lease_ttl", "handoff_ttl", "reply_timeout", "session_ttl"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_shared_bytes < 0 or self.inline_bytes < 0:
            raise ValueError("max_shared_bytes and inline_bytes must be >= 0")


@dataclass
class ClusterCounters:
    """What this node's coordinator did; monotonic (hmac_rejects goes into the heartbeat)."""

    leads: int = 0  # backend calls made as lease holder (refreshes and takeovers included)
    takeovers: int = 0  # followers that took over an expired lease
    deposed: int = 0  # leads that lost their lease before completing (nothing cached)
    handed_back: int = 0  # leads that failed locally and told followers to decide again
    hmac_rejects: int = 0  # shared results dropped for a bad or missing signature
    expired_rejects: int = 0  # signed shared results dropped as past their expiry (replays)
