"""The chaos soak's clients: one thread, one epoll loop, many raw sockets to every node.

Each connection has a protocol (binary/compact), a transport (framed/buffered) and speaks
plain or multiplexed Thrift, all drawn at random, and carries one call at a time. Work comes
in *herds*: one call identity (service, method, arguments - unique per herd, so every
herd is one in-flight window the backend's arrival log can be counted against) sent by
``size`` callers on random connections of random nodes at once. A herd of one is a single
call. Cache-mode ``lookup`` herds spread their callers over a little time, so that late
callers are served by the cache.

Every call ends exactly one way: a correct reply, a crossed reply (someone else's answer),
a clean gateway error (``TApplicationException "gateway: ..."``), the connection closing
under it (its node was killed), or *lost*: nothing at all by its deadline. A lost
connection is reconnected in the background; calls only go to connected sockets.
"""

from __future__ import annotations

import random
import re
import select
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.chaos_wire import (
    PROTOCOLS,
    TRANSPORTS,
    CallSpec,
    decode_reply,
    encode_call,
    expected_kind,
    split_reply,
)

READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
RECONNECT_EVERY = 0.25


@dataclass(eq=False)
class Herd:
    id: int
    spec: CallSpec
    size: int
    started: float  # unix time of the first send
    outcomes: list[str] = field(default_factory=list)
    members: list[tuple[int, float]] = field(default_factory=list)  # (node, unix time sent)


@dataclass(eq=False)
class Call:
    herd: Herd
    seqid: int
    sent: float  # monotonic
    deadline: float  # monotonic


@dataclass(eq=False)
class Conn:
    index: int
    node: int
    protocol: str
    transport: str
    multiplexed: bool
    sock: socket.socket | None = None
    data: bytes = b""
    call: Call | None = None
    retry_at: float = 0.0
    reserved: bool = False  # taken by a herd, its call not sent yet


@dataclass
class Tally:
    """What happened to every call."""

    launched: int = 0
    correct: int = 0
    crossed: int = 0
    lost: int = 0
    unexpected: int = 0  # replies with no call waiting for them (never seen so far)
    errors: Counter[str] = field(default_factory=Counter)
    crossed_samples: list[dict[str, str]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    herds: list[Herd] = field(default_factory=list)


def error_kind(message: str) -> str:
    """A gateway error message with its addresses and numbers blanked, to group by."""
    return re.sub(r"\d+(?:\.\d+)*(?::\d+)?", "N", message)


class Soak:
    """Drives herds of calls at ``addresses`` until ``calls`` were sent or ``seconds`` ran
    out, then waits for the calls still out (each until its own deadline)."""

    def __init__(
        self,
        addresses: Sequence[tuple[str, int]],
        rng: random.Random,
        *,
        calls: int,
        seconds: float,
        connections_per_node: int = 48,
        keyspace: int = 5000,
        deadline: float = 30.0,
    ) -> None:
        self.addresses = list(addresses)
        self.rng = rng
        self.target = calls
        self.seconds = seconds
        self.keyspace = keyspace
        self.deadline = deadline
        self.tally = Tally()
        self.poll = select.epoll()
        self.by_fd: dict[int, Conn] = {}
        self.conns = [
            Conn(
                i,
                node=i % len(self.addresses),
                protocol=rng.choice(PROTOCOLS),
                transport=rng.choice(TRANSPORTS),
                multiplexed=rng.random() < 0.5,
            )
            for i in range(connections_per_node * len(self.addresses))
        ]
        self.idle: list[Conn] = []
        self.delayed: list[tuple[float, Conn, Herd]] = []  # staggered sends: (due, conn, herd)
        self.out = 0  # calls sent and not ended
        self._seqid = 0
        self._herds = 0

    # -- connections ----------------------------------------------------------------------

    def _connect(self, conn: Conn) -> None:
        try:
            sock = socket.create_connection(self.addresses[conn.node], timeout=0.3)
        except OSError:
            conn.retry_at = time.monotonic() + RECONNECT_EVERY
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn.sock, conn.data = sock, b""
        self.by_fd[sock.fileno()] = conn
        self.poll.register(sock.fileno(), READABLE)
        if not conn.reserved:
            self.idle.append(conn)

    def _drop(self, conn: Conn) -> None:
        if conn.sock is not None:
            self.by_fd.pop(conn.sock.fileno(), None)
            self.poll.unregister(conn.sock.fileno())
            conn.sock.close()
            conn.sock = None
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.call is not None:
            self._end(conn, "error:connection closed under the call")
        conn.retry_at = time.monotonic() + RECONNECT_EVERY

    # -- herds ----------------------------------------------------------------------------

    def _spec(self, herd_id: int, single: bool) -> CallSpec:
        rng = self.rng
        key = f"k{rng.randrange(self.keyspace)}~{herd_id}"
        method = rng.choices(["echo", "lookup", "page"], weights=[5, 3, 2])[0]
        if method == "page":
            busy = rng.random() < 0.2
            return CallSpec("Supervisor", "page", f"busy:{key}" if busy else key)
        service = "Poetry" if rng.random() < 0.25 else "Supervisor"
        opts = {} if rng.random() < 0.5 else {"v": str(rng.randrange(3)), "lang": "en"}
        delay = rng.uniform(0.0, 0.01) if single else rng.uniform(0.1, 0.2)
        return CallSpec(service, method, key, tuple(opts.items()), round(delay, 3))

    def _launch(self) -> bool:
        """Start one herd if there are idle connections for it; False if there are not."""
        single = self.rng.random() < 0.45
        size = 1 if single else self.rng.randint(2, 12)
        size = min(size, self.target - self.tally.launched)
        spec = self._spec(self._herds + 1, single)
        usable = [c for c in self.idle if c.multiplexed or spec.service == "Supervisor"]
        if len(usable) < size:
            return False
        self._herds += 1
        herd = Herd(self._herds, spec, size, started=time.time())
        self.tally.herds.append(herd)
        now = time.monotonic()
        for i, conn in enumerate(self.rng.sample(usable, size)):
            self.idle.remove(conn)
            conn.reserved = True
            # Cache-mode herds straggle over 0.3 s: later callers find the cached reply.
            stagger = 0.0 if spec.method != "lookup" or i == 0 else self.rng.uniform(0.0, 0.3)
            self.delayed.append((now + stagger, conn, herd))
            self.tally.launched += 1
        return True

    def _send(self, conn: Conn, herd: Herd) -> None:
        if conn.sock is None:  # lost while it waited to be sent: send once it reconnected
            self.delayed.append((time.monotonic() + RECONNECT_EVERY, conn, herd))
            return
        conn.reserved = False
        herd.members.append((conn.node, time.time()))
        self._seqid = self._seqid % 2_000_000 + 1
        now = time.monotonic()
        conn.call = Call(herd, self._seqid, now, now + self.deadline)
        self.out += 1
        data = encode_call(herd.spec, conn.protocol, conn.transport, conn.multiplexed, self._seqid)
        try:
            conn.sock.setblocking(True)  # small messages: never blocks for long
            conn.sock.sendall(data)
            conn.sock.setblocking(False)
        except OSError:
            self._drop(conn)

    def _end(self, conn: Conn, outcome: str) -> None:
        call, conn.call = conn.call, None
        assert call is not None
        self.out -= 1
        herd = call.herd
        herd.outcomes.append(outcome)
        tally = self.tally
        if outcome == "correct":
            tally.correct += 1
            tally.latencies.append(time.monotonic() - call.sent)
        elif outcome == "crossed":
            tally.crossed += 1
        elif outcome == "lost":
            tally.lost += 1
        else:
            tally.errors[outcome.removeprefix("error:")] += 1
        if conn.sock is not None:
            self.idle.append(conn)

    def _readable(self, conn: Conn) -> None:
        assert conn.sock is not None
        try:
            chunk = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(conn)
            return
        conn.data += chunk
        message, conn.data = split_reply(conn.data, conn.protocol, conn.transport)
        if message is None:
            return
        call = conn.call
        if call is None or conn.data:
            self.tally.unexpected += 1
            self._note_crossed(conn, "unexpected bytes", message + conn.data)
            self._drop(conn)
            return
        reply = decode_reply(message, conn.protocol, call.herd.spec)
        if reply.seqid != call.seqid:
            self._note_crossed(conn, f"seqid {reply.seqid} for {call.seqid}: {reply}", message)
            self._end(conn, "crossed")
        elif reply.kind == "gateway_error":
            self._end(conn, "error:" + error_kind(reply.message))
        elif reply.kind == expected_kind(call.herd.spec) and reply.correct:
            self._end(conn, "correct")
        else:
            self._note_crossed(conn, f"{call.herd.spec} answered {reply}", message)
            self._end(conn, "crossed")

    def _note_crossed(self, conn: Conn, what: str, message: bytes) -> None:
        if len(self.tally.crossed_samples) < 10:
            call = conn.call
            self.tally.crossed_samples.append(
                {
                    "what": what,
                    "time": f"{time.time():.3f}",
                    "after": f"{time.monotonic() - call.sent:.3f}s" if call else "",
                    "connection": f"n{conn.node + 1} {conn.protocol} {conn.transport} "
                    f"{'multiplexed' if conn.multiplexed else 'plain'}",
                    "bytes": message[:300].hex(),
                }
            )

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> Tally:
        for conn in self.conns:
            self._connect(conn)
        stop_launching = time.monotonic() + self.seconds
        next_sweep = 0.0
        while True:
            now = time.monotonic()
            launching = self.tally.launched < self.target and now < stop_launching
            while launching and self.tally.launched < self.target and self._launch():
                pass
            if not launching and self.out == 0 and not self.delayed:
                return self.tally
            due = [d for d in self.delayed if d[0] <= now]
            if due:
                self.delayed = [d for d in self.delayed if d[0] > now]
                for _, conn, herd in due:
                    self._send(conn, herd)
            for fd, _ in self.poll.poll(0.01):
                readable = self.by_fd.get(fd)
                if readable is not None:
                    self._readable(readable)
            if now >= next_sweep:
                next_sweep = now + 0.2
                self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Calls past their deadline are lost; dropped connections are retried."""
        for conn in self.conns:
            if conn.call is not None and now > conn.call.deadline:
                self._end(conn, "lost")
                # Its reply may still come: never reuse the connection for another call.
                if conn in self.idle:
                    self.idle.remove(conn)
                self._drop(conn)
            elif conn.sock is None and now >= conn.retry_at:
                self._connect(conn)

    def close(self) -> None:
        for conn in self.conns:
            if conn.sock is not None:
                conn.sock.close()
        self.poll.close()
