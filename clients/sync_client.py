"""A blocking client for the example services, built only on the stock thrift library.

    with ExampleClient("127.0.0.1", 9090) as client:
        print(client.alert("disk full"))          # "ack:disk full"

Works against an example backend directly or through a gateway node, with any mix of
binary/compact protocol, framed/buffered transport and TMultiplexedProtocol.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from thrift.protocol.TProtocol import TProtocolException
from thrift.Thrift import TApplicationException
from thrift.transport import TSocket, TTransport

from clients.calls import (
    ALERT,
    BACKEND_STATS,
    GET_POEM,
    NOTIFY,
    Method,
    check_name,
    read_result,
    write_call,
)
from clients.calls import protocol_factory as make_protocol_factory

_BROKEN_STREAM = (TTransport.TTransportException, TProtocolException, OSError, EOFError)


class ExampleClient:
    """One connection, one call at a time.

    ``alert`` raises the generated ``SupervisorBusy``, ``get_poem`` the generated
    ``PoemNotFound``; failures the server reports otherwise arrive as thrift's
    ``TApplicationException``; socket trouble (refused, reset, timeout) as
    ``TTransportException``, after which the connection is reopened on the next call.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        protocol: str = "binary",
        transport: str = "framed",
        multiplexed: bool = False,
        timeout: float = 10.0,
    ) -> None:
        if transport not in ("framed", "buffered"):
            raise ValueError(f"unknown transport {transport!r} (framed, buffered)")
        self.host = host
        self.port = port
        self.multiplexed = multiplexed
        self._timeout_ms = timeout * 1000
        self._framed = transport == "framed"
        self._protocol_factory = make_protocol_factory(protocol)
        self._trans: Any = None
        self._prot: Any = None
        self._seqid = 0
        self._open()

    def _open(self) -> None:
        sock = TSocket.TSocket(self.host, self.port)
        sock.setTimeout(self._timeout_ms)
        trans = (
            TTransport.TFramedTransport(sock)
            if self._framed
            else TTransport.TBufferedTransport(sock)
        )
        trans.open()
        self._trans = trans
        self._prot = self._protocol_factory.getProtocol(trans)

    def alert(self, message: str) -> str:
        """``alertSupervisor(message)``; the example backend answers ``"ack:" + message``."""
        reply: str = self._call(ALERT, message=message)
        return reply

    def notify(self, message: str) -> None:
        """Oneway ``notify(message)``: returns once the bytes are sent."""
        self._call(NOTIFY, message=message)

    def get_poem(self, title: str) -> str:
        """``Poetry.getPoem(title)``."""
        poem: str = self._call(GET_POEM, title=title)
        return poem

    def backend_stats(self, service: str = "supervisor") -> dict[str, int]:
        """``backendStats()`` of ``service`` ("supervisor" or "poetry"): calls per method."""
        stats: dict[str, int] = self._call(BACKEND_STATS[service])
        return stats

    def _call(self, method: Method, **fields: Any) -> Any:
        if self._trans is None:
            self._open()
        self._seqid = (self._seqid + 1) & 0x7FFFFFFF
        try:
            write_call(self._prot, method, self._seqid, multiplexed=self.multiplexed, **fields)
            self._trans.flush()
            if method.oneway:
                return None
            name, mtype, seqid = self._prot.readMessageBegin()
            if seqid != self._seqid:
                self.close()
                raise TApplicationException(
                    TApplicationException.BAD_SEQUENCE_ID,
                    f"{method.name}: reply seqid {seqid}, expected {self._seqid}",
                )
            check_name(name, method)
            # Declared exceptions and TApplicationException replies are raised only after the
            # whole message is read, so they leave the connection usable.
            return read_result(self._prot, method, mtype)
        except _BROKEN_STREAM:
            # Where the stream stands is unknown now: a late reply could pass for the next.
            self.close()
            raise

    def close(self) -> None:
        """Close the socket; safe to call twice. A later call reconnects."""
        trans, self._trans, self._prot = self._trans, None, None
        if trans is not None:
            trans.close()

    def __enter__(self) -> ExampleClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
