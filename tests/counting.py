"""Black-box test kit: the thriftpy2 counting backend and thriftpy2 clients for it.

Neither side is the gateway's own Thrift code: the backend is tests/tools/counting_backend.py
(thriftpy2's threaded server) and the clients are thriftpy2's, so a bug in the gateway's
wire layer cannot hide behind the same bug in the test's encoder.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.protocol.multiplex import TMultiplexedProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.transport import TBufferedTransportFactory, TFramedTransportFactory

from gateway.testing import ManagedProcess, start_process

TESTS = Path(__file__).resolve().parent
guarantees = thriftpy2.load(
    str(TESTS / "idl" / "guarantees.thrift"), module_name="guarantees_thrift"
)

PROTOCOLS = {"binary": TBinaryProtocolFactory, "compact": TCompactProtocolFactory}
TRANSPORTS = {"framed": TFramedTransportFactory, "buffered": TBufferedTransportFactory}


def call_name(service: str, method: str, arg: str, opts: dict[str, str]) -> str:
    """The name the counting backend counts a call under (see its ``counts()``)."""
    return f"{service}:{method}:{arg}:{sorted(opts.items())}"


class CountingBackend:
    """A running counting backend process (stopped by PID with :meth:`stop`)."""

    LINE = r"counting backend listening on (\S+):(\d+)"

    def __init__(
        self,
        *,
        multiplexed: bool = True,
        service: str = "Supervisor",
        transport: str = "framed",
        protocol: str = "binary",
        page_delay: float = 0.0,
    ) -> None:
        argv = [
            sys.executable,
            str(TESTS / "tools" / "counting_backend.py"),
            "--service", service,
            "--transport", transport,
            "--protocol", protocol,
            "--page-delay", str(page_delay),
        ]  # fmt: skip
        if multiplexed:
            argv.append("--multiplexed")
        self.multiplexed = multiplexed
        self.service = service
        self.transport = transport
        self.protocol = protocol
        self.process: ManagedProcess = start_process(argv)
        try:
            match = self.process.wait_for_line(self.LINE, timeout=15)
        except BaseException:
            self.process.stop()
            raise
        self.host, self.port = match.group(1), int(match.group(2))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def counts(self, service: str = "Supervisor") -> dict[str, int]:
        """Calls received so far per exact call, asked of the backend directly."""
        with client(
            self.address,
            service=service,
            multiplexed=self.multiplexed,
            transport=self.transport,
            protocol=self.protocol,
        ) as c:
            counts: dict[str, int] = c.counts()
            return counts

    def count(self, service: str, method: str, arg: str, opts: dict[str, str] | None = None) -> int:
        return self.counts(service).get(
            f"{service}:{method}:{arg}:{sorted((opts or {}).items())}", 0
        )

    def stop(self) -> None:
        self.process.stop()


@contextlib.contextmanager
def client(
    address: str,
    *,
    service: str = "Supervisor",
    multiplexed: bool = True,
    transport: str = "framed",
    protocol: str = "binary",
    timeout_ms: int = 15_000,
) -> Iterator[Any]:
    """A connected thriftpy2 client of ``service`` at ``address`` (closed on exit)."""
    host, port = address.rsplit(":", 1)
    proto: Any = PROTOCOLS[protocol]()
    if multiplexed:
        proto = TMultiplexedProtocolFactory(proto, service)
    c = make_client(
        getattr(guarantees, service),
        host,
        int(port),
        proto_factory=proto,
        trans_factory=TRANSPORTS[transport](),
        timeout=timeout_ms,
    )
    try:
        yield c
    finally:
        c.close()


def hang_up_after_sending(
    address: str, method: str, *args: Any, service: str = "Supervisor", multiplexed: bool = True
) -> None:
    """Send one call, then close the connection before any reply can be read."""
    with (
        client(address, service=service, multiplexed=multiplexed, timeout_ms=50) as c,
        contextlib.suppress(Exception),  # the 50 ms read timeout is the point
    ):
        getattr(c, method)(*args)
