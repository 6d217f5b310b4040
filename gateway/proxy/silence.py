"""Noticing a backend host that fell silent: kernel socket options on upstream connections."""

from __future__ import annotations

import socket

SILENCE_FLOOR = 3.0  # seconds: a packet or two lost (resent after 0.2 s, 0.4 s, ...) is not death


def drop_when_silent(transport: object, seconds: float) -> None:
    """Have the kernel drop this TCP connection once the peer host was silent ``seconds``
    (at least :data:`SILENCE_FLOOR`).

    TCP_USER_TIMEOUT: bytes we sent that stay unacknowledged that long abort it. An idle
    connection is probed (keepalive) every third of that time, at least every second, and
    aborted once no probe was answered for that long - two or more probes lost in a row.
    Only the peer's kernel has to answer, so a slow backend process is never taken for a
    dead host, and the floor keeps a lost packet or two on a lossy link from looking like
    one. Without this, a partitioned backend (packets dropped, no reset) keeps the
    connection open for many minutes of retransmissions: every call sent on it waits out
    its timeout - an ambiguous failure, shared with the followers of non-idempotent
    methods - and the node never learns that the backend is unreachable (a local failure,
    which it would hand back to them). Transports without a TCP socket are left alone.
    """
    get_handle = getattr(transport, "getHandle", None)
    sock = get_handle() if get_handle is not None else None
    if not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM:
        return
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    seconds = max(seconds, SILENCE_FLOOR)
    probe_every = max(1, int(seconds // 3))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = [("TCP_KEEPIDLE", probe_every), ("TCP_KEEPINTVL", probe_every)]
    options.append(("TCP_USER_TIMEOUT", round(seconds * 1000)))
    for name, value in options:
        option = getattr(socket, name, None)  # Linux names; other systems keep their defaults
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
