"""Black-box test kit: the thriftpy2 counting backend and thriftpy2 clients for it.

Neither side is the gateway's own Thrift code: the backend is tests/tools/counting_backend.py
(thriftpy2's threaded server) and the clients are thriftpy2's, so a bug in the gateway's
wire layer cannot hide behind the same bug in the test's encoder.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.protocol.multiplex import TMultiplexedProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.transport import TBufferedTransportFactory, TFramedTransportFactory

from gateway.processes import (
    GatewayProcess,
    ManagedProcess,
    start_gateway,
    start_process,
    wait_for_redis_mode,
)

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
    """A running counting backend process (stopped by PID with :meth:`stop`).

    It listens on ``host`` (port ``port``, 0: OS-chosen); ``launcher`` is an argv prefix it
    runs under (``ip netns exec NS`` in tests/netns.py, which execs it: same PID). It closes
    connections idle for ``client_timeout`` seconds (thriftpy2's default 3; 0: never).
    """

    LINE = r"counting backend listening on (\S+):(\d+)"

    def __init__(
        self,
        *,
        multiplexed: bool = True,
        service: str = "Supervisor",
        transport: str = "framed",
        protocol: str = "binary",
        page_delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        launcher: Sequence[str] = (),
        client_timeout: float = 3.0,
    ) -> None:
        argv = [
            *launcher,
            sys.executable,
            str(TESTS / "tools" / "counting_backend.py"),
            "--service", service,
            "--transport", transport,
            "--protocol", protocol,
            "--page-delay", str(page_delay),
            "--host", host,
            "--port", str(port),
            "--client-timeout", str(client_timeout),
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


# -- gateway processes in front of it ---------------------------------------------------------


def write_config(
    tmp_path: Path,
    backend: CountingBackend,
    *,
    redis: str | None = None,
    methods: str = "",
    redis_extra: str = "",
    gateway_extra: str = "",
) -> Path:
    """A gateway config file in ``tmp_path`` with ``backend`` as the default backend."""
    path = tmp_path / f"gateway-{len(list(tmp_path.iterdir()))}.toml"
    redis_table = f'[redis]\nurl = "{redis}"\n{redis_extra}\n' if redis else ""
    path.write_text(
        f"""
[gateway]
drain_timeout = 10
{gateway_extra}
{redis_table}
[backends.default]
address = "{backend.address}"
multiplexed = {"true" if backend.multiplexed else "false"}
service = "Supervisor"
connections = 16
{methods}
"""
    )
    return path


def gateway(nodes: list[GatewayProcess], config: Path, node_id: str) -> GatewayProcess:
    """Start a node (admin port on) and add it to ``nodes`` (the fixture that stops them)."""
    node = start_gateway(config=config, node_id=node_id, admin=True)
    nodes.append(node)
    return node


def cluster(nodes: list[GatewayProcess], config: Path, *node_ids: str) -> list[GatewayProcess]:
    """Nodes on one Redis, returned once every one of them is in cluster mode."""
    started = [gateway(nodes, config, node_id) for node_id in node_ids]
    wait_for_redis_mode(started, "cluster")
    return started


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)
