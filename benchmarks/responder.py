"""A cheap Thrift backend for the proxy comparison: one thread, one epoll loop, no Twisted.

    python -m benchmarks.responder --listen 127.0.0.1:0 [--delay SECONDS]

Answers ``alertSupervisor(message)`` with ``"ack:" + message`` and ``getPoem(title)`` with the
example backend's poem, in framed transport, binary (strict) or compact protocol (recognised
per message by its first byte); other methods get ``TApplicationException(UNKNOWN_METHOD)``
and oneway calls nothing. The first call of each distinct (method, arguments) is decoded
and answered by the stock thrift library; the reply is then kept as bytes around the seqid,
so every later identical call costs a dict lookup and the seqid copied back verbatim. That
keeps the backend's CPU per call a small fraction of a proxy's, unlike the Twisted example
backend (``gateway example-backend``), which the benchmark measures as well.

``--delay``: every reply leaves that many seconds after its call arrived (in order).
Prints ``responder supervisor+poetry listening on HOST:PORT (framed/binary+compact)`` once
ready; runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Sequence
from struct import pack, unpack_from
from typing import Any

from thrift.Thrift import TApplicationException, TMessageType
from thrift.transport import TTransport

from benchmarks.wire import METHODS, argument_name, encode_reply, expected_result
from clients.calls import protocol_factory

READ_SIZE = 64 * 1024  # below glibc's mmap threshold: a bigger read buffer costs an mmap per read
MAX_FRAME = 16 * 1024 * 1024
CACHE_LIMIT = 100_000  # distinct calls remembered; the cache starts over beyond that
BINARY, COMPACT = 0x80, 0x82


def answer(protocol: str, message: bytes) -> bytes | None:
    """The whole unframed reply to one call message (None for a oneway call)."""
    prot = protocol_factory(protocol).getProtocol(TTransport.TMemoryBuffer(message))
    name, mtype, seqid = prot.readMessageBegin()
    if mtype == TMessageType.ONEWAY:
        return None
    method = METHODS.get(name)
    if method is not None:
        try:
            args = method.args()
            args.read(prot)
            argument = getattr(args, argument_name(name))
            return encode_reply(protocol, name, seqid, expected_result(name, argument))
        except Exception as exc:  # any decoding failure becomes the reply
            error = TApplicationException(TApplicationException.PROTOCOL_ERROR, repr(exc))
    else:
        error = TApplicationException(TApplicationException.UNKNOWN_METHOD, f"unknown {name}")
    out = TTransport.TMemoryBuffer()
    oprot = protocol_factory(protocol).getProtocol(out)
    oprot.writeMessageBegin(name, TMessageType.EXCEPTION, seqid)
    error.write(oprot)
    oprot.writeMessageEnd()
    reply: bytes = out.getvalue()
    return reply


class Responder:
    def __init__(self, listener: socket.socket, delay: float, record: bool = False) -> None:
        self.listener = listener
        self.delay_ns = int(delay * 1e9)
        # With ``record``: (time.monotonic() of arrival, call bytes without seqid) per call,
        # for benchmarks that time when calls reach the backend (benchmarks.failover).
        self.arrivals: list[tuple[float, bytes]] | None = [] if record else None
        self.ep = select.epoll()
        self.ep.register(listener.fileno(), select.EPOLLIN)
        self.conns: dict[int, socket.socket] = {}
        self.rest: dict[int, bytes] = {}
        self.unsent: dict[int, bytes] = {}
        # (protocol byte, call bytes without seqid) -> reply bytes before and after the seqid,
        # or () for a call that gets no reply
        self.cache: dict[tuple[int, bytes], tuple[bytes, ...]] = {}
        self.later: deque[tuple[int, int, bytes]] = deque()  # (due ns, fd, reply bytes)

    def serve(self) -> None:
        lfd = self.listener.fileno()
        epfd = self.ep.fileno()
        while True:
            if self.later:
                wait = max(0.0, (self.later[0][0] - time.perf_counter_ns()) / 1e9)
                select.select([epfd], [], [], wait)  # microseconds, unlike epoll's milliseconds
                events = self.ep.poll(0)
            else:
                events = self.ep.poll(1.0)
            for fd, ev in events:
                if fd == lfd:
                    self._accept()
                    continue
                if ev & select.EPOLLOUT:
                    self._write(fd, b"")
                if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and fd in self.conns:
                    self._read(fd)
            if self.later:
                self._release_due()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns[sock.fileno()] = sock
            self.ep.register(sock.fileno(), select.EPOLLIN)

    def _close(self, fd: int) -> None:
        sock = self.conns.pop(fd, None)
        if sock is not None:
            self.ep.unregister(fd)
            sock.close()
        self.rest.pop(fd, None)
        self.unsent.pop(fd, None)

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except OSError:
            data = b""
        if not data:
            self._close(fd)
            return
        rest = self.rest.pop(fd, b"")
        if rest:
            data = rest + data
        out: list[bytes] = []
        cache = self.cache
        pos, end = 0, len(data)
        while end - pos >= 4:
            size = unpack_from(">I", data, pos)[0]
            if size > MAX_FRAME or size < 2:
                self._close(fd)
                return
            stop = pos + 4 + size
            if stop > end:
                break
            m = pos + 4
            kind = data[m]
            if kind == BINARY and size >= 12:
                seq_at = m + 8 + unpack_from(">I", data, m + 4)[0]
                seq = data[seq_at : seq_at + 4]
                key = data[m:seq_at] + data[seq_at + 4 : stop]
            elif kind == COMPACT:
                seq_at = q = m + 2
                while q < stop and data[q] & 0x80:
                    q += 1
                seq = data[seq_at : q + 1]
                key = data[m:seq_at] + data[q + 1 : stop]
            else:
                self._close(fd)  # not a protocol this responder speaks
                return
            if self.arrivals is not None:
                self.arrivals.append((time.monotonic(), key))
            parts = cache.get((kind, key))
            if parts is None:
                parts = self._learn(kind, data[m:stop], seq_at - m, len(seq))
            if parts:
                head, tail = parts
                out.append(pack(">I", len(head) + len(seq) + len(tail)))
                out += (head, seq, tail)
            pos = stop
        if pos < end:
            self.rest[fd] = data[pos:]
        if out:
            reply = b"".join(out)
            if self.delay_ns:
                self.later.append((time.perf_counter_ns() + self.delay_ns, fd, reply))
            else:
                self._write(fd, reply)

    def _learn(self, kind: int, message: bytes, seq_at: int, seq_width: int) -> tuple[bytes, ...]:
        """Answer a call not seen before with the stock thrift library and remember it."""
        protocol = "binary" if kind == BINARY else "compact"
        try:
            reply = answer(protocol, message)
        except Exception:  # an undecodable header: nothing to answer
            reply = None
        parts: tuple[bytes, ...]
        if reply is None:
            parts = ()
        elif protocol == "binary":  # the reply's name is the call's, so the seqid sits alike
            parts = reply[:seq_at], reply[seq_at + 4 :]
        else:  # compact: the seqid follows two bytes, as wide as the call's
            parts = reply[:2], reply[2 + seq_width :]
        if len(self.cache) >= CACHE_LIMIT:
            self.cache.clear()
        key = message[:seq_at] + message[seq_at + seq_width :]
        self.cache[(kind, key)] = parts
        return parts

    def _write(self, fd: int, data: bytes) -> None:
        pending = self.unsent.pop(fd, b"")
        if pending:
            data = pending + data
        if not data or fd not in self.conns:
            return
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            self._close(fd)
            return
        if n < len(data):
            self.unsent[fd] = data[n:]
            self.ep.modify(fd, select.EPOLLIN | select.EPOLLOUT)
        elif pending:
            self.ep.modify(fd, select.EPOLLIN)

    def _release_due(self) -> None:
        now = time.perf_counter_ns()
        later = self.later
        while later and later[0][0] <= now:
            _, fd, reply = later.popleft()
            self._write(fd, reply)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.responder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument("--delay", type=float, default=0.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host.strip("[]"), int(port)))
    listener.listen(1024)
    listener.setblocking(False)
    responder = Responder(listener, args.delay)

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)  # straight out of the poll; the OS closes the sockets

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    bound = listener.getsockname()[1]
    print(
        f"responder supervisor+poetry listening on {host}:{bound} (framed/binary+compact)",
        flush=True,
    )
    responder.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
