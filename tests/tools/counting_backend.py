"""A thriftpy2 backend for black-box tests: two services whose replies carry call counters.

Usage: python counting_backend.py [--multiplexed] [--service Supervisor|Poetry]
           [--transport framed|buffered] [--protocol binary|compact] [--page-delay S]
           [--host ADDR] [--port N] [--log FILE] [--client-timeout S]

Serves tests/idl/guarantees.thrift on ``--host`` (default 127.0.0.1), port ``--port``
(default 0: OS-chosen) and prints ``counting backend listening on HOST:PORT`` once ready.
With ``--multiplexed`` both services are served through thriftpy2's TMultiplexedProcessor;
otherwise only ``--service``.
Calls are counted when they *arrive*, before any delay, so N coalesced callers show as 1.
``--log FILE`` also appends one line per arrival, ``<unix time>\t<call name>``, written
before the call is served, so it outlives a kill -9 and a restart appends to it (the chaos
soak counts backend calls per in-flight window from it).
Every connection is served by its own thread (pipelined calls on one connection are
answered one after the other); like thriftpy2's server by default, it closes a connection
that sent nothing for ``--client-timeout`` seconds (default 3; 0: never). SIGTERM/SIGKILL
stops it.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.server import TThreadedServer
from thriftpy2.thrift import TMultiplexedProcessor, TProcessor
from thriftpy2.transport import (
    TBufferedTransportFactory,
    TFramedTransportFactory,
    TServerSocket,
)

IDL = Path(__file__).resolve().parent.parent / "idl" / "guarantees.thrift"
guarantees = thriftpy2.load(str(IDL), module_name="guarantees_thrift")


class Counter:
    """Thread-safe call counts shared by both services (and the arrival log, if any)."""

    def __init__(self, log_path: str | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._total = 0
        self._log = (
            os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log_path else None
        )

    def arrived(self, name: str) -> tuple[int, int]:
        if self._log is not None:  # one unbuffered append: survives a kill -9 right after
            os.write(self._log, f"{time.time():.6f}\t{name}\n".encode())
        with self._lock:
            self._counts[name] += 1
            self._total += 1
            return self._counts[name], self._total

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class Handler:
    def __init__(self, service: str, counter: Counter, page_delay: float) -> None:
        self.service = service
        self.counter = counter
        self.page_delay = page_delay

    def _answer(
        self, method: str, arg: str, opts: dict[str, str] | None, delay: float | None
    ) -> Any:
        opts, delay = opts or {}, delay or 0.0  # a caller may leave optional fields out
        name = f"{self.service}:{method}:{arg}:{sorted(opts.items())}"
        call, total = self.counter.arrived(name)
        if delay > 0:
            time.sleep(delay)
        return guarantees.Echo(self.service, method, arg, opts, call, total)

    def echo(self, arg: str, opts: dict[str, str], delay: float) -> Any:
        return self._answer("echo", arg, opts, delay)

    def lookup(self, arg: str, opts: dict[str, str], delay: float) -> Any:
        return self._answer("lookup", arg, opts, delay)

    def page(self, message: str) -> Any:
        if message.startswith("busy:"):
            self.counter.arrived(f"{self.service}:page:{message}:[]")
            raise guarantees.Busy(why=message)
        return self._answer("page", message, {}, self.page_delay)

    def counts(self) -> dict[str, int]:
        return self.counter.snapshot()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--multiplexed", action="store_true")
    parser.add_argument("--service", choices=["Supervisor", "Poetry"], default="Supervisor")
    parser.add_argument("--transport", choices=["framed", "buffered"], default="framed")
    parser.add_argument("--protocol", choices=["binary", "compact"], default="binary")
    parser.add_argument("--page-delay", type=float, default=0.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", default=None)
    parser.add_argument("--client-timeout", type=float, default=3.0)
    args = parser.parse_args(argv)

    counter = Counter(args.log)
    processor: Any
    if args.multiplexed:
        processor = TMultiplexedProcessor()
        for name in ("Supervisor", "Poetry"):
            service = getattr(guarantees, name)
            processor.register_processor(
                name, TProcessor(service, Handler(name, counter, args.page_delay))
            )
    else:
        service = getattr(guarantees, args.service)
        processor = TProcessor(service, Handler(args.service, counter, args.page_delay))
    transport = (
        TFramedTransportFactory() if args.transport == "framed" else TBufferedTransportFactory()
    )
    protocol = TBinaryProtocolFactory() if args.protocol == "binary" else TCompactProtocolFactory()
    server_socket = TServerSocket(
        host=args.host, port=args.port, client_timeout=int(args.client_timeout * 1000)
    )
    server = TThreadedServer(
        processor, server_socket, iprot_factory=protocol, itrans_factory=transport, daemon=True
    )
    server_socket.listen()
    port = server_socket.sock.getsockname()[1]
    server_socket.listen = lambda: None  # type: ignore[method-assign]  # listening already
    print(f"counting backend listening on {args.host}:{port}", flush=True)
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
