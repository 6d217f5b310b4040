"""The client port of a multi-worker node: one SO_REUSEPORT listening socket per worker.

Why per-worker SO_REUSEPORT sockets rather than one listening socket all workers inherit:
with one shared socket every worker's epoll wakes on each new connection and whichever runs
first accepts everything queued (Twisted accepts in a loop until EAGAIN), so connections
opened in a burst - a client pool starting, a herd - land lopsided (64 connections split
64/0 or 0/64 in two of three tries on a 2-core box). With SO_REUSEPORT the kernel spreads
connections over the sockets by a hash of their addresses (64 split 34/30, 31/33, 54/10).

The supervisor binds every socket itself and hands each to its worker as an inherited
descriptor, so port 0 works (the first bind picks the port, the rest join it) and the one
listening line names the real port. It keeps one more socket bound to the port but not
listening (it receives no connections): the port stays the node's while a worker restarts,
even if every worker is down at once. A worker's socket lives only in that worker: when it
dies the kernel closes it, so new connections go to the other workers instead of queueing
for a dead one, and its replacement gets a fresh socket.

SO_REUSEPORT lets any process of the same user join the port. So that two nodes configured
with the same port do not silently share it, the port is first bound *without* the option,
which fails (one-line "cannot listen") if anyone holds it.
"""

from __future__ import annotations

import socket

BACKLOG = 1024  # as a single-process node: a herd of clients connects at once


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bound(host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's listenTCP
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def supported() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def hold_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: a free one) with SO_REUSEPORT, not listening:
    it keeps the port the node's. Raises OSError if the port is taken."""
    with _bound(host, port, reuse_port=False) as probe:  # fails if anyone holds the port
        port = probe.getsockname()[1]
    return _bound(host, port, reuse_port=True)


def worker_listener(host: str, port: int) -> socket.socket:
    """A fresh listening socket on the node's port for one worker (inheritable, so the
    worker process can be handed it)."""
    sock = _bound(host, port, reuse_port=True)
    try:
        sock.listen(BACKLOG)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock
