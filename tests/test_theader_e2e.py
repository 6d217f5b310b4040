"""THeader callers and plain callers through a real ``gateway serve``: one backend call.

Black-box, with Thrift stacks the gateway did not write on both sides: the thriftpy2 counting
backend (tests/tools/counting_backend.py: replies carry per-call counters), stock Apache Thrift
Python ``THeaderProtocol`` clients (code generated from tests/idl/guarantees.thrift by the
``thrift`` compiler; skipped without it) and thriftpy2 framed/buffered clients.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from counting import TESTS, CountingBackend, client, gateway, write_config
from interop_support import thrift_compiler

from gateway.processes import GatewayProcess

pytestmark = pytest.mark.integration

DELAY = 0.8  # seconds the backend takes: every caller arrives while the first call is underway


@pytest.fixture(scope="module")
def stock_supervisor(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The stock Python ``Supervisor`` module generated from guarantees.thrift."""
    compiler = thrift_compiler()
    if compiler is None:
        pytest.skip("needs the thrift compiler (Debian thrift-compiler) for the stock client")
    out = tmp_path_factory.mktemp("guarantees-py")
    idl = TESTS / "idl" / "guarantees.thrift"
    subprocess.run([compiler, "--gen", "py", "-out", str(out), str(idl)], check=True, timeout=60)
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("guarantees.Supervisor")
    finally:
        sys.path.remove(str(out))


@contextmanager
def header_client(
    supervisor: Any, address: str, headers: dict[bytes, bytes], *, compact_zlib: bool = False
) -> Iterator[Callable[..., Any]]:
    """``echo`` of a stock THeaderProtocol Supervisor client sending ``headers`` with it."""
    from thrift.protocol.THeaderProtocol import THeaderProtocol
    from thrift.transport.THeaderTransport import (
        THeaderClientType,
        THeaderSubprotocolID,
        THeaderTransformID,
    )
    from thrift.transport.TSocket import TSocket

    host, port = address.rsplit(":", 1)
    socket = TSocket(host, int(port))
    socket.setTimeout(10_000)
    inner = THeaderSubprotocolID.COMPACT if compact_zlib else THeaderSubprotocolID.BINARY
    protocol = THeaderProtocol(socket, [THeaderClientType.HEADERS], inner)
    if compact_zlib:
        protocol.add_transform(THeaderTransformID.ZLIB)
    stub = supervisor.Client(protocol)

    def echo(*args: Any) -> Any:
        for key, value in headers.items():  # cleared by every flush: set per call
            protocol.set_header(key, value)
        return stub.echo(*args)

    protocol.trans.open()
    try:
        yield echo
    finally:
        protocol.trans.close()


def plain_client(address: str, transport: str, protocol: str) -> Callable[..., Any]:
    """A caller making ``echo`` with a thriftpy2 client of that transport and protocol."""

    def echo(*args: Any) -> Any:
        with client(address, multiplexed=False, transport=transport, protocol=protocol) as c:
            return c.echo(*args)

    return echo


def all_at_once(calls: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run every call in its own thread, released together; name -> result (or exception)."""
    results: dict[str, Any] = {}
    start = threading.Barrier(len(calls))

    def run(name: str, call: Callable[[], Any]) -> None:
        start.wait()
        try:
            results[name] = call()
        except Exception as exc:  # reported by the assertions on results
            results[name] = exc

    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


@pytest.fixture
def backend() -> Iterator[CountingBackend]:
    backend = CountingBackend(multiplexed=False)
    yield backend
    backend.stop()


def _node(
    nodes: list[GatewayProcess], tmp_path: Path, backend: CountingBackend, methods: str = ""
) -> str:
    return gateway(nodes, write_config(tmp_path, backend, methods=methods), "theader").address


def test_theader_and_plain_callers_share_one_backend_call(
    tmp_path: Path,
    backend: CountingBackend,
    nodes: list[GatewayProcess],
    stock_supervisor: Any,
) -> None:
    """THeader callers (binary; compact + zlib; each its own trace id) and thriftpy2 framed
    and buffered callers making the same call at once share one backend call, and each gets
    the reply to it."""
    address = _node(nodes, tmp_path, backend)
    arg = f"x-{uuid.uuid4().hex}"

    def header_call(compact_zlib: bool) -> Callable[[], Any]:
        def call() -> Any:
            trace = {b"trace-id": uuid.uuid4().hex.encode()}
            with header_client(stock_supervisor, address, trace, compact_zlib=compact_zlib) as e:
                return e(arg, {}, DELAY)

        return call

    results = all_at_once(
        {
            "header-binary-1": header_call(False),
            "header-binary-2": header_call(False),
            "header-compact-zlib": header_call(True),
            "framed-binary": lambda: plain_client(address, "framed", "binary")(arg, {}, DELAY),
            "buffered-compact": lambda: plain_client(address, "buffered", "compact")(
                arg, {}, DELAY
            ),
        }
    )
    answers = {name: (r.answered_by, r.arg, r.call) for name, r in results.items()}
    assert set(answers.values()) == {("Supervisor", arg, 1)}, answers
    assert backend.count("Supervisor", "echo", arg) == 1


def test_key_headers_split_calls_by_tenant_only(
    tmp_path: Path,
    backend: CountingBackend,
    nodes: list[GatewayProcess],
    stock_supervisor: Any,
) -> None:
    """With ``key_headers = ["tenant"]``: THeader callers of one tenant share a backend call
    whatever their trace ids, another tenant gets its own, and a THeader caller without the
    header shares the plain framed caller's call: three backend calls for five callers."""
    methods = '[methods.echo]\nkey_headers = ["tenant"]\n'
    address = _node(nodes, tmp_path, backend, methods)
    arg = f"t-{uuid.uuid4().hex}"

    def header_call(tenant: bytes | None) -> Callable[[], Any]:
        headers = {b"trace-id": uuid.uuid4().hex.encode()}
        if tenant is not None:
            headers[b"tenant"] = tenant

        def call() -> Any:
            with header_client(stock_supervisor, address, headers) as echo:
                return echo(arg, {}, DELAY)

        return call

    results = all_at_once(
        {
            "a-1": header_call(b"a"),
            "a-2": header_call(b"a"),
            "b": header_call(b"b"),
            "none": header_call(None),
            "framed": lambda: plain_client(address, "framed", "binary")(arg, {}, DELAY),
        }
    )
    call = {name: r.call for name, r in results.items()}
    assert call["a-1"] == call["a-2"] and call["none"] == call["framed"], call
    assert sorted({call["a-1"], call["b"], call["none"]}) == [1, 2, 3], call
    assert backend.count("Supervisor", "echo", arg) == 3
