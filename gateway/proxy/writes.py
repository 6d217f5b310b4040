"""Writing replies and calls without a reactor round trip when the connection is idle."""

from __future__ import annotations

from typing import Any

from twisted.internet.tcp import Connection


def send_now(transport: Any, data: bytes) -> None:
    """Write ``data`` to ``transport``; on an idle TCP connection, with one ``send()`` now.

    ``transport.write`` only buffers: it registers the socket for writability and the
    reactor sends on its next turn, then unregisters - two epoll calls and a reactor turn
    per reply on a connection that holds one call at a time, which is most of them. When
    nothing is queued before ``data`` (Twisted's two write buffers are empty), sending it
    straight away keeps the byte order, only sooner. Whatever the socket does not take at
    once (or any error) goes through ``write`` as usual, which keeps Twisted's buffering,
    producer pausing and error handling in charge. Other transports (TLS, test doubles)
    always use ``write``.
    """
    if (
        isinstance(transport, Connection)
        and not transport.dataBuffer
        and not transport._tempDataBuffer
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:  # EAGAIN, or a dead socket: write() buffers it or reports the loss
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
