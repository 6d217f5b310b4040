"""The role a ``decide``/``poll`` script reply assigns to one call (see scripts.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.redis.connection import Reply

Kind = Literal["cache", "stale", "stale_lead", "follow", "lead", "result", "again"]
_ENTRY_KINDS: dict[str, Kind] = {"cache": "cache", "stale": "stale", "result": "result"}


class UnexpectedReply(Exception):
    """A script answered with something this version does not understand."""


@dataclass(frozen=True)
class Decision:
    """``entry``: cache entry or envelope bytes; ``token``: lease token to lead or follow.

    ``again`` never comes from Redis: a follower whose leader abandoned the call uses it to
    ask for a fresh decision.
    """

    kind: Kind
    entry: bytes = b""
    token: str = ""
    lease_ms: int = 0  # follow: the lease's remaining time when decided
    fence: int = 0  # lead / stale_lead: the fencing number of this leadership


def parse_decision(reply: Reply) -> Decision:
    if not isinstance(reply, list) or not reply or not isinstance(reply[0], bytes):
        raise UnexpectedReply(f"unexpected decide reply {reply!r:.80}")
    kind = reply[0].decode()
    rest = reply[1:]
    try:
        if kind in _ENTRY_KINDS:
            return Decision(_ENTRY_KINDS[kind], entry=_bytes(rest[0]))
        if kind == "stale_lead":
            return Decision(
                "stale_lead", entry=_bytes(rest[0]), token=_text(rest[1]), fence=_int(rest[2])
            )
        if kind == "lead":
            return Decision("lead", token=_text(rest[0]), fence=_int(rest[1]))
        if kind == "follow":
            left = rest[1]
            # PTTL -1 (no expiry) cannot happen for a lease we set; treat it as "unknown".
            lease_ms = left if isinstance(left, int) and left >= 0 else 0
            return Decision("follow", token=_text(rest[0]), lease_ms=lease_ms)
    except IndexError:
        pass
    raise UnexpectedReply(f"unexpected decide reply {reply!r:.80}")


def _bytes(value: Reply) -> bytes:
    if not isinstance(value, bytes):
        raise UnexpectedReply(f"expected bytes, got {type(value).__name__}")
    return value


def _int(value: Reply) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise UnexpectedReply(f"expected an integer, got {type(value).__name__}")
    return value


def _text(value: Reply) -> str:
    return _bytes(value).decode("ascii", "replace")
