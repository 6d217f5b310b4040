"""A userspace stand-in for ``tc netem delay``: holds queued packets for a fixed time.

Usage: ip netns exec NS python nfqueue_delay.py   (commands on stdin, one per line)

    bind QUEUE SECONDS    hold every packet of NFQUEUE queue QUEUE for SECONDS, then accept
                          it; answers "bound QUEUE" once the kernel confirmed the binding

Prints "ready" first. iptables rules ``-j NFQUEUE --queue-num QUEUE`` (tests/netns.py puts
them in the bridge's namespace) choose which packets go to which queue, so one process
delays every link of the test network, each queue by its own amount. Packets of one queue
leave in the order they came (one delay per queue), so TCP sees latency, not reordering.
It speaks nfnetlink_queue directly over a netlink socket: no libnetfilter_queue, nothing
to install. It exits when stdin closes, so it never outlives the test that started it.

Kernels built without ``CONFIG_NET_SCH_NETEM`` (this project's CI VM, for one) have no
netem, but ``CONFIG_NETFILTER_NETLINK_QUEUE`` and iptables' NFQUEUE target are common.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import os
import select
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1  # the packet's id and metadata only: its bytes are never copied to us
NF_ACCEPT = 1
PACKET_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


class Queues:
    """The netlink socket, the queues bound on it and the packets being held."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        # A burst beyond the buffer loses those packets (TCP resends them) instead of
        # failing recv() with ENOBUFS.
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self.sock.bind((0, 0))
        self.delays: dict[int, float] = {}
        self.held: list[tuple[float, int, int, int]] = []  # (due, order, queue, packet id)
        self._order = itertools.count()
        self._seq = itertools.count(1)

    def _send(self, kind: int, queue: int, attrs: list[bytes], flags: int = NLM_F_REQUEST) -> None:
        # nfgenmsg: family, version, queue number (big-endian)
        body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + b"".join(attrs)
        head = HEADER.pack(
            HEADER.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, next(self._seq), 0
        )
        self.sock.send(head + body)

    def bind(self, queue: int, delay: float) -> None:
        if queue not in self.delays:
            self._config(queue, _attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)))
            self._config(
                queue,
                _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)),
                _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 50_000)),
            )
        self.delays[queue] = delay

    def _config(self, queue: int, *attrs: bytes) -> None:
        """One config request, acknowledged (packets arriving meanwhile are taken in)."""
        self._send(NFQNL_MSG_CONFIG, queue, list(attrs), NLM_F_REQUEST | NLM_F_ACK)
        while True:
            for kind, payload in self._messages(self.sock.recv(1 << 20)):
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload)
                    if code:
                        raise OSError(-code, f"binding queue {queue}: {os.strerror(-code)}")
                    return

    def _messages(self, data: bytes) -> list[tuple[int, bytes]]:
        """The (type, payload) of every message in ``data``; packets are taken in on the way."""
        out = []
        offset = 0
        while offset + HEADER.size <= len(data):
            size, kind = HEADER.unpack_from(data, offset)[:2]
            payload = data[offset + HEADER.size : offset + size]
            if kind == PACKET_TYPE:
                self._hold(payload)
            else:
                out.append((kind, payload))
            offset += (size + 3) & ~3
        return out

    def _hold(self, payload: bytes) -> None:
        (queue,) = struct.unpack_from("!H", payload, 2)
        offset = 4  # past nfgenmsg
        while offset + 4 <= len(payload):
            size, kind = struct.unpack_from("=HH", payload, offset)
            if kind & 0x3FFF == NFQA_PACKET_HDR:
                (packet_id,) = struct.unpack_from("!I", payload, offset + 4)
                due = time.monotonic() + self.delays.get(queue, 0.0)
                heapq.heappush(self.held, (due, next(self._order), queue, packet_id))
                return
            offset += (size + 3) & ~3

    def receive(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                return
            raise
        self._messages(data)

    def release_due(self) -> float | None:
        """Accept every packet whose time has come; seconds until the next one (None: none)."""
        while self.held:
            due, _, queue, packet_id = self.held[0]
            wait = due - time.monotonic()
            if wait > 0:
                return wait
            heapq.heappop(self.held)
            verdict = _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
            self._send(NFQNL_MSG_VERDICT, queue, [verdict])
        return None


def main() -> int:
    queues = Queues()
    print("ready", flush=True)
    stdin = sys.stdin.fileno()
    pending = b""
    while True:
        wait = queues.release_due()
        readable, _, _ = select.select([queues.sock, stdin], [], [], wait)
        if queues.sock in readable:
            queues.receive()
        if stdin in readable:
            chunk = os.read(stdin, 4096)
            if not chunk:
                return 0  # our owner is gone
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                words = line.split()
                if len(words) == 3 and words[0] == b"bind":
                    queues.bind(int(words[1]), float(words[2]))
                    print(f"bound {int(words[1])}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
