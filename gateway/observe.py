"""What a node observes about its calls beyond the counters: hot keys, error kinds, call ages.

A small shared module (like ``stats`` and ``contracts``): the proxy side *feeds* it (the flight
table records each finished call's callers, the handler counts error kinds) and the cluster
side (heartbeat) and the metrics endpoint *read* it, without importing each other.

The feeding side sees only the Protocols (:class:`HotKeyRecorder`, :class:`ErrorRecorder`,
:class:`FlightAges`); :class:`Observations` bundles this node's concrete objects.
Nothing here touches a reactor or Redis; recording is a dict update, so it may run per call.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from gateway import errors

KEY_ID_CHARS = 12  # hex digits of the call key's hash shown as its "key id" (48 bits)
MAX_HOT_KEYS = 1000  # distinct (method, key id) pairs held between two heartbeats
PREVIEW_LIMIT = 256  # hard cap on a preview's length, whatever a method's config asks


class HotKeyRecorder(Protocol):
    """Told once per finished coalesced call (a "flight"), not once per caller."""

    def record(self, method: str, key_id: str, callers: int, preview: str | None = None) -> None:
        """``callers``: client calls the flight answered on this node (its own caller
        included); ``preview``: the truncated arguments, only for methods that opted in."""
        ...


class ErrorRecorder(Protocol):
    def count(self, kind: str) -> None:
        """One gateway-made error reply of ``kind`` (see :func:`error_kind`)."""
        ...


class FlightAges(Protocol):
    """What the node knows about the calls it has in flight (fed by the flight table)."""

    def oldest_started_at(self) -> float | None:
        """Start time (the reactor's ``seconds()``, wall-clock seconds) of the oldest call
        in flight on this node, led or followed; None when nothing is in flight."""
        ...


@dataclass(frozen=True)
class HotKey:
    method: str
    key_id: str
    callers: int
    preview: str | None = None


class HotKeys:
    """A :class:`HotKeyRecorder` that sums callers per (method, key id) until drained.

    Bounded: once ``max_keys`` distinct pairs are held, calls of new pairs are only counted in
    :attr:`dropped` (pairs already held keep counting) until the next :meth:`drain`.
    """

    def __init__(self, max_keys: int = MAX_HOT_KEYS) -> None:
        self._max_keys = max_keys
        self._callers: dict[tuple[str, str], int] = {}
        self._previews: dict[tuple[str, str], str] = {}
        self.dropped = 0  # callers of pairs that found the table full (monotonic)

    def record(self, method: str, key_id: str, callers: int, preview: str | None = None) -> None:
        pair = (method, key_id)
        held = self._callers.get(pair)
        if held is None and len(self._callers) >= self._max_keys:
            self.dropped += callers
            return
        self._callers[pair] = (held or 0) + callers
        if preview is not None:
            self._previews[pair] = preview[:PREVIEW_LIMIT]

    def __len__(self) -> int:
        return len(self._callers)

    def drain(self, top: int | None = None) -> list[HotKey]:
        """The pairs recorded since the last drain, most callers first (the ``top`` ones),
        and forget them all."""
        ranked = sorted(self._callers.items(), key=lambda item: (-item[1], item[0]))
        if top is not None:
            ranked = ranked[:top]
        hot = [HotKey(m, k, n, self._previews.get((m, k))) for (m, k), n in ranked]
        self._callers, self._previews = {}, {}
        return hot


class ErrorKinds:
    """An :class:`ErrorRecorder`: monotonic counts per error kind."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def count(self, kind: str) -> None:
        self._counts[kind] += 1

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)


@dataclass
class Observations:
    """This node's observers; ``flights`` is None until something (the flight table) that
    knows call start times is attached."""

    hot_keys: HotKeys = field(default_factory=HotKeys)
    errors: ErrorKinds = field(default_factory=ErrorKinds)
    flights: FlightAges | None = None


def split_call_key(key: str) -> tuple[str, str]:
    """``("<backend>.<upstream name>", "<key id>")`` of a call key
    ``"<backend>.<upstream name>:<hex digest>"``; the key id is the digest's first
    :data:`KEY_ID_CHARS` hex digits. A key of another shape is its own method, key id "-"."""
    # Called once per finished flight: a partition, not a regular expression.
    method, sep, digest = key.rpartition(":")
    if not sep or not method or len(digest) < 16 or digest.strip("0123456789abcdef"):
        return key, "-"
    return method, digest[:KEY_ID_CHARS]


_KINDS: tuple[tuple[type[errors.GatewayError], str], ...] = (
    # Subclasses before their bases: the first match wins.
    (errors.BackendTLSFailed, "backend_tls"),
    (errors.BackendUnreachable, "backend_unreachable"),
    (errors.ConnectionLost, "connection_lost"),
    (errors.BackendUnavailable, "backend_unavailable"),
    (errors.BackendTimeout, "backend_timeout"),
    (errors.Overloaded, "overloaded"),
    (errors.ShuttingDown, "shutting_down"),
    (errors.UnknownRoute, "unknown_route"),
    (errors.RemoteCallFailed, "remote_failed"),
    (errors.ReplyTooLarge, "reply_too_large"),
)


def error_kind(exc: BaseException | None) -> str:
    """The kind under which the error reply for ``exc`` is counted: ``backend_timeout``,
    ``overloaded``, ... (``internal`` for anything unexpected). Replies to malformed client
    input have no exception behind them: the handler counts those as ``malformed``."""
    for cls, kind in _KINDS:
        if isinstance(exc, cls):
            return kind
    return "internal"
