"""The load generator's engine: one epoll loop over raw non-blocking sockets (see
:mod:`benchmarks.rawload` for what a run does and reports)."""

from __future__ import annotations

import os
import resource
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from struct import pack_into, unpack_from

from benchmarks.loadspec import LoadResult, LoadSpec, WindowHook, percentiles
from benchmarks.wire import CallSet

MAX_FRAME = 16 * 1024 * 1024
EPOLLOUT = select.EPOLLOUT
READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
READ_SIZE = 64 * 1024  # below glibc's mmap threshold: a bigger read buffer costs an mmap per read


class Conn:
    __slots__ = ("alive", "fd", "free", "index", "rest", "sock", "unsent", "waiting")

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.fd = sock.fileno()
        self.rest = b""  # bytes of a reply not yet complete
        self.unsent = b""  # bytes the socket did not take yet
        self.free: list[int] = []  # open loop: this connection's idle slots
        self.waiting: deque[int] = deque()  # open loop: due times of calls without a slot
        self.alive = True


def connect(host: str, port: int, count: int, timeout: float) -> list[Conn]:
    conns = []
    try:
        for i in range(count):
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            conns.append(Conn(i, sock))
    except BaseException:
        for conn in conns:
            conn.sock.close()
        raise
    return conns


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Loop:
    """The epoll loop of one run. The per-call code is inlined in the :meth:`_reader`
    closure on purpose: at ~10 µs per call, every Python function call on the path shows."""

    def __init__(
        self, callset: CallSet, spec: LoadSpec, conns: list[Conn], hook: WindowHook | None
    ) -> None:
        self.spec = spec
        self.conns = conns
        self.hook = hook
        self.cs = callset
        self.result = LoadResult(spec=asdict(spec))
        depth = spec.depth
        nslots = len(conns) * depth
        self.nslots = nslots
        codec = callset.codec
        self.low = codec.low
        self.high = codec.high - (codec.high - codec.low + 1) % nslots  # whole laps only
        if self.high - self.low + 1 < nslots:
            raise ValueError(f"{nslots} slots do not fit the {codec.protocol} seqid range")
        variant = [0] * nslots if spec.hot else list(range(nslots))
        self.bufs = [bytearray(callset.calls[v]) for v in variant]
        self.tails = [callset.reply_tails[v] for v in variant]
        self.seq = [self.low + s for s in range(nslots)]  # seq[s] % nslots stays s - low
        self.start = [0] * nslots  # due/sent time (ns) of the slot's call; 0: idle
        self.latencies = self.result.latencies_ns
        self.in_flight = 0
        self.ep = select.epoll()
        self.by_fd = {c.fd: c for c in conns}
        for c in conns:
            self.ep.register(c.fd, select.EPOLLIN)
            if spec.rate:
                c.free = list(range(c.index * depth, (c.index + 1) * depth))[::-1]
        self.issuing = True
        self.recording = False
        self.closed_loop = not spec.rate  # cleared when the window closes (drain)
        self._read = self._reader()

    # -- sending ------------------------------------------------------------------------

    def _patch(self, slot: int) -> bytearray:
        """Give ``slot`` its next seqid; returns its call buffer, patched in place."""
        s = self.seq[slot] + self.nslots
        if s > self.high:
            s = self.low + slot
        self.seq[slot] = s
        buf = self.bufs[slot]
        at = self.cs.call_seqid_at
        if self.cs.protocol == "binary":
            pack_into(">I", buf, at, s)
        else:
            buf[at] = s & 0x7F | 0x80
            buf[at + 1] = (s >> 7) & 0x7F | 0x80
            buf[at + 2] = s >> 14
        self.in_flight += 1
        return buf

    def _write(self, conn: Conn, data: bytes | bytearray) -> None:
        if conn.unsent:
            conn.unsent += data  # keep the order behind what is already queued
            return
        try:
            n = os.write(conn.fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            self._lose(conn)
            return
        if n < len(data):
            conn.unsent = bytes(data[n:])
            self.ep.modify(conn.fd, select.EPOLLIN | select.EPOLLOUT)

    def _flush(self, conn: Conn) -> None:
        try:
            n = os.write(conn.fd, conn.unsent)
        except BlockingIOError:
            return
        except OSError:
            self._lose(conn)
            return
        conn.unsent = conn.unsent[n:]
        if not conn.unsent:
            self.ep.modify(conn.fd, select.EPOLLIN)

    def _lose(self, conn: Conn) -> None:
        """The connection is gone (closed, reset, or out of step): its calls are lost."""
        if not conn.alive:
            return
        conn.alive = False
        self.result.lost_connections += 1
        depth = self.spec.depth
        for slot in range(conn.index * depth, (conn.index + 1) * depth):
            if self.start[slot]:
                self.start[slot] = 0
                self.in_flight -= 1
                self.result.lost += 1
        self.result.not_sent += len(conn.waiting)
        conn.waiting.clear()
        self.ep.unregister(conn.fd)

    # -- receiving ----------------------------------------------------------------------

    def _reader(self) -> Callable[[Conn, int], None]:
        """The per-call hot path as a closure over the run's constants (cell reads are as
        cheap as locals; attribute reads are not, at ~10 µs per call on a small VM).

        ``read(conn, now)`` checks every whole reply that arrived on ``conn`` and, in the
        closed loop, sends each answered slot's next call at once (one write for all)."""
        cs = self.cs
        head, size, framed = cs.reply_head, cs.reply_size, cs.framed
        seq_at = len(head)
        tail_at = seq_at + cs.codec.width
        call_at = cs.call_seqid_at
        binary = cs.protocol == "binary"
        low, high, nslots, depth = self.low, self.high, self.nslots, self.spec.depth
        seq, start, tails, lat, bufs = self.seq, self.start, self.tails, self.latencies, self.bufs
        result = self.result
        read_fd, write_fd, perf = os.read, os.write, time.perf_counter_ns

        def read(conn: Conn, now: int) -> None:
            try:
                data = read_fd(conn.fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lose(conn)
                return
            if conn.rest:
                data = conn.rest + data
                conn.rest = b""
            first = conn.index * depth
            recording = self.recording
            again: list[int] = []
            pos, end = 0, len(data)
            while True:
                if end - pos >= size and data.startswith(head, pos):
                    p = pos + seq_at
                    if binary:
                        s = unpack_from(">I", data, p)[0]
                    else:
                        s = (data[p] & 0x7F) | (data[p + 1] & 0x7F) << 7 | data[p + 2] << 14
                    slot = (s - low) % nslots
                    if seq[slot] != s or not start[slot] or not first <= slot < first + depth:
                        result.unmatched += 1
                    else:
                        if data.startswith(tails[slot], pos + tail_at):
                            result.all_ok += 1
                            if recording:
                                lat.append(now - start[slot])
                        else:
                            self._wrong(data[pos : pos + size], recording)
                        start[slot] = 0
                        again.append(slot)
                    pos += size
                    continue
                if pos == end:
                    break
                if framed:
                    skipped = self._odd_frame(conn, data, pos, again)
                    if skipped < 0:
                        self.in_flight -= len(again)  # answered above, before the bad frame
                        return
                    if skipped == 0:
                        conn.rest = data[pos:]
                        break
                    pos += skipped
                elif end - pos >= size:  # unframed and not the expected reply: out of step
                    self.in_flight -= len(again)  # answered above, before these bytes
                    # A buffered server answers in order: these bytes were the oldest
                    # call's answer, which is wrong; the connection's other calls are lost.
                    oldest = min(
                        (slot for slot in range(first, first + depth) if start[slot]),
                        key=start.__getitem__,
                        default=None,
                    )
                    if oldest is not None:
                        start[oldest] = 0
                        self.in_flight -= 1
                    self._wrong(data[pos : pos + size], recording)
                    self._lose(conn)
                    return
                else:
                    conn.rest = data[pos:]
                    break
            if not again:
                return
            self.in_flight -= len(again)
            if not self.closed_loop or conn.unsent:
                self._refill(conn, again, self.closed_loop)
                return
            # The closed loop's next calls, inlined (see _patch and _write): next seqid,
            # patched in place, sent.
            for slot in again:
                s = seq[slot] + nslots
                if s > high:
                    s = low + slot
                seq[slot] = s
                if binary:
                    pack_into(">I", bufs[slot], call_at, s)
                else:
                    buf = bufs[slot]
                    buf[call_at] = s & 0x7F | 0x80
                    buf[call_at + 1] = (s >> 7) & 0x7F | 0x80
                    buf[call_at + 2] = s >> 14
            self.in_flight += len(again)
            out = bufs[again[0]] if len(again) == 1 else b"".join([bufs[s] for s in again])
            sent = perf()
            for slot in again:
                start[slot] = sent
            try:
                n = write_fd(conn.fd, out)
            except BlockingIOError:
                n = 0
            except OSError:
                self._lose(conn)
                return
            if n < len(out):
                conn.unsent = bytes(out[n:])
                self.ep.modify(conn.fd, select.EPOLLIN | select.EPOLLOUT)

        return read

    def _odd_frame(self, conn: Conn, data: bytes, pos: int, again: list[int]) -> int:
        """A frame that is not a correct reply: bytes consumed (0: incomplete; -1: the
        connection was dropped). If its seqid is one in flight, that call failed."""
        if len(data) - pos < 4:
            return 0
        length = int.from_bytes(data[pos : pos + 4], "big")
        if length == self.cs.reply_size - 4 and len(data) - pos < self.cs.reply_size:
            return 0  # a reply of the right size, still arriving
        if length > MAX_FRAME:
            self._wrong(data[pos : pos + 64], self.recording)
            self._lose(conn)
            return -1
        if len(data) - pos < 4 + length:
            return 0
        frame = data[pos : pos + 4 + length]
        self._wrong(frame, self.recording)
        at = len(self.cs.reply_head)
        if len(frame) >= at + self.cs.codec.width:
            s = self.cs.codec.decode(frame, at)
            slot = (s - self.low) % self.nslots
            first = conn.index * self.spec.depth
            if self.seq[slot] == s and self.start[slot] and first <= slot < first + self.spec.depth:
                self.start[slot] = 0
                again.append(slot)
                return 4 + length
        self.result.unmatched += 1
        return 4 + length

    def _wrong(self, reply: bytes, recording: bool) -> None:
        self.result.all_wrong += 1
        if _is_exception(reply[4:] if self.cs.framed else reply):
            self.result.all_failed += 1
        if recording:
            self.result.wrong += 1
        if len(self.result.wrong_samples) < 5:
            self.result.wrong_samples.append(repr(reply[:200]))

    def _refill(self, conn: Conn, slots: list[int], closed: bool) -> None:
        """Slots whose calls just finished: closed loop sends each one's next call; open
        loop gives them to calls waiting for a slot, or back to the free list."""
        if not conn.alive:
            return
        start = self.start
        if closed:
            if len(slots) == 1:
                buf = self._patch(slots[0])
                start[slots[0]] = time.perf_counter_ns()
                self._write(conn, buf)
                return
            out = b"".join([self._patch(s) for s in slots])
            now = time.perf_counter_ns()
            for s in slots:
                start[s] = now
            self._write(conn, out)
            return
        parts = []
        for s in slots:
            if conn.waiting and self.issuing:
                parts.append(self._patch(s))
                start[s] = conn.waiting.popleft()
            else:
                conn.free.append(s)
        if parts:
            self._write(conn, b"".join(parts))

    # -- the loop -----------------------------------------------------------------------

    def _mark(self) -> None:
        self.result.window_marks.append(self.hook() if self.hook else {})

    def run(self) -> LoadResult:
        spec, result, conns = self.spec, self.result, self.conns
        perf = time.perf_counter_ns
        t0 = perf()
        w0 = t0 + int(spec.warmup * 1e9)
        w1 = w0 + int(spec.seconds * 1e9)
        next_mark = w0  # when the window opens, then when it closes, then the drain's end
        period = int(1e9 / spec.rate) if spec.rate else 0
        next_due = t0
        rr = 0
        if not period:  # closed loop: every slot starts at once
            depth = spec.depth
            for conn in conns:
                self._refill(conn, list(range(conn.index * depth, (conn.index + 1) * depth)), True)
        cpu0 = 0.0
        opened = closed_at = 0
        epfd = self.ep.fileno()
        poll = self.ep.poll
        by_fd, read = self.by_fd, self._read
        while True:
            now = perf()
            if now >= next_mark:
                if not opened:
                    self._mark()
                    cpu0, opened = cpu_self(), perf()
                    self.recording = True
                    next_mark = w1
                elif not closed_at:
                    result.generator_cpu_s = round(cpu_self() - cpu0, 6)
                    closed_at = perf()
                    self._mark()
                    self.recording = self.issuing = self.closed_loop = False
                    next_mark = now + int(spec.drain_timeout * 1e9)
                else:
                    break  # the drain timed out
            if not self.issuing and self.in_flight == 0:
                break
            if period and self.issuing:
                while next_due <= now:
                    conn = conns[rr]
                    rr = rr + 1 if rr + 1 < len(conns) else 0
                    if conn.alive:
                        if conn.free:
                            slot = conn.free.pop()
                            buf = self._patch(slot)
                            self.start[slot] = next_due
                            self._write(conn, buf)
                        else:
                            conn.waiting.append(next_due)
                    next_due += period
                # epoll waits in whole milliseconds; select() on the epoll fd itself waits
                # in microseconds, so calls go out on time at any rate. Woken by the clock
                # with nothing ready, the poll is skipped.
                wait = (min(next_due, next_mark) - perf()) / 1e9
                ready = wait <= 0 or select.select([epfd], [], [], wait)[0]
                events = poll(0) if ready else []
            else:
                events = poll(max(0.0, (next_mark - now) / 1e9) + 1e-3)
            now = perf()
            for fd, ev in events:
                conn = by_fd[fd]
                if ev & EPOLLOUT and conn.unsent:
                    self._flush(conn)
                if ev & READABLE and conn.alive:
                    read(conn, now)
            if self.in_flight > result.max_in_flight:
                result.max_in_flight = self.in_flight
        for conn in conns:
            if conn.alive:
                result.not_sent += len(conn.waiting)
        result.lost += self.in_flight
        self.ep.close()
        result.ok = len(self.latencies)  # a latency is kept for each correct reply in the window
        result.window_s = round((closed_at - opened) / 1e9, 4)
        if result.window_s > 0:
            result.calls_per_s = round(result.ok / result.window_s, 1)
        if result.ok:
            result.generator_cpu_us_per_call = round(1e6 * result.generator_cpu_s / result.ok, 3)
        result.latency_ms = percentiles(self.latencies)
        return result


def _is_exception(message: bytes) -> bool:
    """Whether ``message`` (unframed) is an EXCEPTION message: a failed call, not a crossed
    reply (strict binary: the version word's low byte; compact: the type bits)."""
    if len(message) >= 4 and message[0] == 0x80:
        return message[3] == 3
    return len(message) >= 2 and message[0] == 0x82 and message[1] >> 5 == 3
