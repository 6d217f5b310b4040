"""Limits on client connections, kept per node: how many, how idle, how far ahead of us.

:class:`ClientLimits` holds the ``[gateway]`` connection limits. :class:`ConnectionTable` is
the node's view of its open client connections: it refuses connections beyond
``max_connections``, closes idle ones in one coarse periodic sweep (no timer per connection
and no clock read per received chunk: a connection only sets a flag when bytes arrive),
bounds partial messages (a message must be whole ``body_timeout`` after its first bytes, and
all partial messages of the node together stay within ``max_partial_bytes``: the largest go
first), and counts and logs the backpressure events the connections report (reads paused
because replies pile up unread, or because ``max_pipelined`` calls are unanswered).

Log lines that a misbehaving client (or a crowd of them) could trigger at will are
rate-limited (:class:`RateLimitedLog`): one line per kind per interval, telling how many
more happened in between.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.task import LoopingCall

from gateway.reactors import as_clock
from gateway.stats import NodeStats

log = logging.getLogger("gateway.server")

LOG_INTERVAL = 10.0  # seconds between two lines of one rate-limited kind
_MAX_SWEEP_INTERVAL = 30.0  # an idle connection is closed at most this late


@dataclass(frozen=True)
class ClientLimits:
    """Bounds on each client connection and on their number (README "Client connections").

    ``idle_timeout`` 0 means never: persistent Thrift clients do not reconnect by themselves,
    and the servers they were written against (TSimpleServer, TThreadedServer, TTwisted...)
    never close an idle connection, so a drop-in gateway does not either unless told to.
    """

    max_pipelined: int = 128  # calls dispatched and unanswered per connection
    max_unsent_bytes: int = 1 << 20  # reply bytes waiting for the client to read them
    idle_timeout: float = 0.0  # seconds without bytes or pending calls; 0: never
    max_connections: int = 10_000  # open client connections per node
    header_zlib_replies: bool = False  # THeader replies compressed when their call was
    # A message whose first bytes arrived must be whole within this many seconds (0: never),
    # like nginx's client_body_timeout but for the whole message: a trickle cannot keep a
    # partial frame (up to max_frame_size) pinned.
    body_timeout: float = 10.0
    # Bytes of partial messages buffered on the node, all connections together; beyond it
    # the connections holding the largest ones are closed.
    max_partial_bytes: int = 256 << 20

    def __post_init__(self) -> None:
        for name in ("max_pipelined", "max_unsent_bytes", "max_connections", "max_partial_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ClientLimits.{name} must be positive")
        for name in ("idle_timeout", "body_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"ClientLimits.{name} must be >= 0")


DEFAULT_CLIENT_LIMITS = ClientLimits()


class RateLimitedLog:
    """At most one warning per ``interval`` seconds; the next one says how many were held back."""

    def __init__(
        self, clock: Any, interval: float = LOG_INTERVAL, logger: logging.Logger = log
    ) -> None:
        self._clock = as_clock(clock)
        self._log = logger
        self._interval = interval
        self._next = float("-inf")
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = self._clock.seconds()
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self._interval
        if self._suppressed:
            message += " (%d more like this in the last %gs)"
            args = (*args, self._suppressed, self._interval)
            self._suppressed = 0
        self._log.warning(message, *args)


class Tracked(Protocol):
    """What the table needs of a client connection (``server.ClientConnection``)."""

    active: bool  # bytes arrived since the last sweep
    idle_since: float  # when the last sweep that saw activity (or the connection) began

    def busy(self) -> bool:
        """A call of this connection is dispatched or waiting to be."""
        ...

    def close_idle(self, abort: bool) -> None:
        """Close for idleness: gracefully first, ``abort`` if a graceful close is stuck."""
        ...

    def close_partial(self, why: str) -> None:
        """Drop the partial message buffered and close (calls dispatched are answered)."""
        ...


class ConnectionTable:
    """The node's open client connections, their number limit and the idle sweep."""

    def __init__(self, limits: ClientLimits, stats: NodeStats, clock: Any) -> None:
        self.limits = limits
        self.stats = stats
        self.clock = as_clock(clock)
        self._open: set[Tracked] = set()
        self._idle_closing: set[Tracked] = set()
        self._paused: set[Tracked] = set()
        self.refused_log = RateLimitedLog(clock)
        self.unsent_log = RateLimitedLog(clock)
        self.pipelined_log = RateLimitedLog(clock)
        self.oversized_log = RateLimitedLog(clock)
        self._sweep = LoopingCall(self.sweep)
        self._sweep.clock = clock
        # Connections inside a message: (bytes of it buffered, when its first bytes came).
        self._partial: dict[Tracked, tuple[int, float]] = {}
        self._body_sweep = LoopingCall(self.sweep_bodies)
        self._body_sweep.clock = clock

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[Tracked]:
        return iter(list(self._open))

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the idle sweep (if ``idle_timeout`` is set); warn if the fd limit is lower
        than ``max_connections``."""
        _warn_if_fd_limit_is_low(self.limits.max_connections)
        timeout = self.limits.idle_timeout
        if timeout > 0 and not self._sweep.running:
            self._sweep.start(sweep_interval(timeout), now=False)

    def stop(self) -> None:
        if self._sweep.running:
            self._sweep.stop()
        if self._body_sweep.running:
            self._body_sweep.stop()

    def admit(self, peer: str) -> bool:
        """Whether one more connection may open; counts and logs a refusal."""
        if len(self._open) < self.limits.max_connections:
            return True
        self.stats.connections_refused += 1
        self.refused_log.warning(
            "refusing client %s: max_connections (%d) reached",
            peer, self.limits.max_connections,
        )  # fmt: skip
        return False

    def opened(self, conn: Tracked) -> None:
        conn.idle_since = self.clock.seconds()
        self._open.add(conn)
        self.stats.client_connections = len(self._open)

    def closed(self, conn: Tracked) -> None:
        self.partial(conn, None)
        self._open.discard(conn)
        self._idle_closing.discard(conn)
        self.resumed(conn)
        self.stats.client_connections = len(self._open)

    # -- backpressure bookkeeping ----------------------------------------------------------

    def paused(self, conn: Tracked, reason: str, peer: str) -> None:
        """``conn`` stopped reading its socket because of ``reason`` (unsent/pipelined)."""
        self._paused.add(conn)
        self.stats.clients_paused = len(self._paused)
        if reason == "unsent":
            self.stats.reads_paused_unsent += 1
            self.unsent_log.warning(
                "client %s is not reading its replies (over max_unsent_bytes %d unsent); "
                "not reading its calls until they drain",
                peer, self.limits.max_unsent_bytes,
            )  # fmt: skip
        else:
            self.stats.reads_paused_pipelined += 1
            self.pipelined_log.warning(
                "client %s has max_pipelined (%d) calls unanswered; "
                "not reading more until one is answered",
                peer, self.limits.max_pipelined,
            )  # fmt: skip

    def resumed(self, conn: Tracked) -> None:
        if conn in self._paused:
            self._paused.discard(conn)
            self.stats.clients_paused = len(self._paused)

    # -- partial messages ------------------------------------------------------------------

    def partial(self, conn: Tracked, size: int | None) -> None:
        """``conn`` holds ``size`` bytes of a message not yet whole (None: it is between
        messages). Over ``max_partial_bytes`` node-wide, the connections holding the largest
        partial messages (the oldest among equals) are closed until the rest fit."""
        entry = self._partial.get(conn)
        if size is None:
            if entry is not None:
                del self._partial[conn]
                self.stats.partial_bytes -= entry[0]
                if not self._partial and self._body_sweep.running:
                    self._body_sweep.stop()
            return
        if entry is None:
            # One clock read per message that does not arrive in one read, not per chunk.
            self._partial[conn] = (size, self.clock.seconds())
            self.stats.partial_bytes += size
            timeout = self.limits.body_timeout
            if timeout > 0 and not self._body_sweep.running:
                # Only while some message is underway: an idle node runs no timer.
                self._body_sweep.start(body_sweep_interval(timeout), now=False)
        else:
            self._partial[conn] = (size, entry[1])
            self.stats.partial_bytes += size - entry[0]
        if self.stats.partial_bytes > self.limits.max_partial_bytes:
            self._shed_partials()

    def _shed_partials(self) -> None:
        budget = self.limits.max_partial_bytes
        # Rare (the budget is exceeded), so a sort is fine: largest first, oldest first.
        victims = sorted(self._partial.items(), key=lambda item: (-item[1][0], item[1][1]))
        for conn, (size, _) in victims:
            if self.stats.partial_bytes <= budget:
                break
            self.stats.partial_closed += 1
            conn.close_partial(
                f"partial message of {size} bytes; the node holds {self.stats.partial_bytes} bytes "
                f"of partial messages, over max_partial_bytes {budget}"
            )
            self.partial(conn, None)

    def sweep_bodies(self) -> None:
        """Close connections whose message underway began over ``body_timeout`` ago."""
        timeout = self.limits.body_timeout
        deadline = self.clock.seconds() - timeout
        late = [(conn, size) for conn, (size, since) in self._partial.items() if since <= deadline]
        for conn, size in late:
            self.stats.partial_closed += 1
            conn.close_partial(
                f"message not whole {timeout:g}s after its first bytes (body_timeout; "
                f"{size} bytes of it buffered)"
            )
            self.partial(conn, None)

    # -- idle sweep ------------------------------------------------------------------------

    def sweep(self) -> None:
        """Close connections that received no byte and had no call pending for
        ``idle_timeout``; abort those whose graceful idle close did not finish since the
        last sweep (a client that does not read what is still unsent)."""
        now = self.clock.seconds()
        timeout = self.limits.idle_timeout
        closing: list[Tracked] = []
        for conn in list(self._open):
            if conn in self._idle_closing:
                conn.close_idle(abort=True)
            elif conn.active or conn.busy():
                # Last activity fell within (previous sweep, now]: counting idleness from
                # now can only close later than idle_timeout, never earlier.
                conn.active = False
                conn.idle_since = now
            elif now - conn.idle_since >= timeout:
                closing.append(conn)
        for conn in closing:
            self._idle_closing.add(conn)
            conn.close_idle(abort=False)
        if closing:
            self.stats.idle_closed += len(closing)
            # One line per sweep, however many connections it closes.
            log.info(
                "closed %d idle client connection(s) (no bytes and no call for %gs)",
                len(closing), timeout,
            )  # fmt: skip


def sweep_interval(idle_timeout: float) -> float:
    """Seconds between idle sweeps: a connection is closed between ``idle_timeout`` and
    ``idle_timeout`` + this after its last byte or answered call."""
    return min(idle_timeout / 4, _MAX_SWEEP_INTERVAL)


def body_sweep_interval(body_timeout: float) -> float:
    """Seconds between body deadline sweeps: a partial message is dropped between
    ``body_timeout`` and ``body_timeout`` + this after its first bytes."""
    return max(min(body_timeout / 4, 1.0), 0.01)


def _warn_if_fd_limit_is_low(max_connections: int) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < max_connections + 64:
        log.warning(
            "open-files limit (ulimit -n) is %d, below max_connections (%d) plus the node's "
            "own sockets: accepting may fail with EMFILE before max_connections is reached",
            soft, max_connections,
        )  # fmt: skip
