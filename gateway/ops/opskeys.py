"""Redis names of what ops read: per-node history streams, hot-key buckets, the in-flight index.

====================================  ======  ===================================================
key                                   type    meaning (bounds)
====================================  ======  ===================================================
``<prefix>history:{<node_id>}``       stream  one entry per heartbeat: counter deltas (MAXLEN ~,
                                              expires with the node's history window)
``<prefix>hot:<minute>``              zset    ``"<method> <key id>"`` -> callers coalesced in the
                                              minute starting at unix time ``<minute>`` (top
                                              members only; expires after the hot-key window)
``<prefix>hot:<minute>:previews``     hash    ``"<method> <key id>"`` -> truncated arguments, for
                                              methods with ``preview`` set (same expiry)
``<prefix>{<b>}:inflight``            zset    call keys ``K`` led now in bucket ``b``, scored by
                                              start time (written by the call scripts)
``<prefix>{<b>}:K:flight``            hash    ``node``, ``token``, ``followers`` of that call
``<prefix>{<b>}:K:lease``             string  the leader's lease token
====================================  ======  ===================================================

The last three belong to the call scripts' bucketed schema (one hash tag per bucket ``b``, two
hex digits ``00``..``3f``); this module only names them for the readers.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.cluster.keys import DEFAULT_PREFIX

BUCKETS = tuple(f"{i:02x}" for i in range(64))
HOT_BUCKET_SECONDS = 60


def hot_member(method: str, key_id: str) -> str:
    return f"{method} {key_id}"


def parse_hot_member(member: str) -> tuple[str, str]:
    """``(method, key id)``; the key id is hex, so the last space separates them."""
    method, _, key_id = member.rpartition(" ")
    return (method, key_id) if method else (key_id, "-")


def minute_of(seconds: float) -> int:
    """Start (unix seconds) of the hot-key bucket holding time ``seconds``."""
    return int(seconds // HOT_BUCKET_SECONDS) * HOT_BUCKET_SECONDS


@dataclass(frozen=True)
class OpsKeys:
    prefix: str = DEFAULT_PREFIX

    def history(self, node_id: str) -> str:
        """A node's history stream; the node id is its hash tag, as for its counters hash, so
        one script writes both."""
        return f"{self.prefix}history:{{{node_id}}}"

    def hot(self, minute: int) -> str:
        return f"{self.prefix}hot:{minute}"

    def hot_previews(self, minute: int) -> str:
        return f"{self.prefix}hot:{minute}:previews"

    def inflight(self, bucket: str) -> str:
        return f"{self.prefix}{{{bucket}}}:inflight"

    def flight(self, bucket: str, key: str) -> str:
        return f"{self.prefix}{{{bucket}}}:{key}:flight"

    def lease(self, bucket: str, key: str) -> str:
        return f"{self.prefix}{{{bucket}}}:{key}:lease"
