"""Limits on client connections, kept per node: how many, how idle, how far ahead of us.

:class:`ClientLimits` holds the four ``[gateway]`` limits. :class:`ConnectionTable` is the
node's view of its open client connections: it refuses connections beyond
``max_connections``, closes idle ones in one coarse periodic sweep (no timer per connection
and no clock read per received chunk: a connection only sets a flag when bytes arrive), and
counts and logs the backpressure events the connections report (reads paused because
replies pile up unread, or because ``max_pipelined`` calls are unanswered).

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

    def __post_init__(self) -> None:
        for name in ("max_pipelined", "max_unsent_bytes", "max_connections"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ClientLimits.{name} must be positive")
        if self.idle_timeout < 0:
            raise ValueError("ClientLimits.idle_timeout must be >= 0")


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


def _warn_if_fd_limit_is_low(max_connections: int) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < max_connections + 64:
        log.warning(
            "open-files limit (ulimit -n) is %d, below max_connections (%d) plus the node's "
            "own sockets: accepting may fail with EMFILE before max_connections is reached",
            soft, max_connections,
        )  # fmt: skip
