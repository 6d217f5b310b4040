"""Every wrapped client dialect through a real ``gateway serve``: one backend call per key.

Black-box: the thriftpy2 counting backend (tests/tools/counting_backend.py) behind the gateway,
stock Apache Thrift Python clients (code generated from tests/idl/guarantees.thrift by the
``thrift`` compiler; skipped without it) in THeader-inside-TFramedTransport, TJSONProtocol
(buffered, framed, over HTTP), TZlibTransport (buffered, over framed) and plain framed binary.
"""

from __future__ import annotations

import importlib
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from counting import CountingBackend, gateway, write_config
from interop_support import thrift_compiler
from test_theader_e2e import all_at_once, plain_client
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.protocol.TJSONProtocol import TJSONProtocol
from thrift.Thrift import TApplicationException
from thrift.transport.THeaderTransport import THeaderClientType
from thrift.transport.THttpClient import THttpClient
from thrift.transport.TSocket import TSocket
from thrift.transport.TTransport import TBufferedTransport, TFramedTransport
from thrift.transport.TZlibTransport import TZlibTransport

from gateway.processes import GatewayProcess

pytestmark = pytest.mark.integration

DELAY = 0.8  # seconds the backend takes: every caller arrives while the first call is underway

# name -> (transport stack over a TSocket, protocol over it); "http" uses THttpClient instead.
STACKS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "header-in-framed": (
        TFramedTransport,
        lambda t: THeaderProtocol(t, [THeaderClientType.HEADERS]),
    ),
    "json-buffered": (TBufferedTransport, TJSONProtocol),
    "json-framed": (TFramedTransport, TJSONProtocol),
    "zlib-buffered-compact": (lambda s: TZlibTransport(TBufferedTransport(s)), TCompactProtocol),
    "zlib-over-framed": (lambda s: TZlibTransport(TFramedTransport(s)), TBinaryProtocol),
    "zlib-json": (TZlibTransport, TJSONProtocol),
}
HTTP_STACKS: dict[str, Callable[[Any], Any]] = {
    "http-json": TJSONProtocol,
    "http-binary": TBinaryProtocol,
    "http-header": lambda t: THeaderProtocol(t, [THeaderClientType.HEADERS]),
}


@contextmanager
def stock_client(supervisor: Any, address: str, dialect: str) -> Iterator[Any]:
    """A stock Supervisor client of ``dialect`` (a key of STACKS or HTTP_STACKS)."""
    host, port = address.rsplit(":", 1)
    if dialect in HTTP_STACKS:
        transport: Any = THttpClient(f"http://{host}:{port}/rpc")
        transport.setTimeout(10_000)
        protocol = HTTP_STACKS[dialect](transport)
    else:
        sock = TSocket(host, int(port))
        sock.setTimeout(10_000)
        make_transport, make_protocol = STACKS[dialect]
        protocol = make_protocol(make_transport(sock))
    stub = supervisor.Client(protocol)
    protocol.trans.open()
    try:
        yield stub
    finally:
        protocol.trans.close()


@pytest.fixture(scope="module")
def stock_supervisor(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The stock Python ``Supervisor`` module generated from guarantees.thrift."""
    compiler = thrift_compiler()
    if compiler is None:
        pytest.skip("needs the thrift compiler (Debian thrift-compiler) for the stock clients")
    out = tmp_path_factory.mktemp("guarantees-py")
    idl = Path(__file__).parent / "idl" / "guarantees.thrift"
    subprocess.run([compiler, "--gen", "py", "-out", str(out), str(idl)], check=True, timeout=60)
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("guarantees.Supervisor")
    finally:
        sys.path.remove(str(out))


@pytest.fixture
def backend() -> Iterator[CountingBackend]:
    backend = CountingBackend(multiplexed=False)
    yield backend
    backend.stop()


def _node(nodes: list[GatewayProcess], tmp_path: Path, backend: CountingBackend) -> str:
    return gateway(nodes, write_config(tmp_path, backend), "dialects").address


def test_each_dialect_gets_its_replies(
    tmp_path: Path, backend: CountingBackend, nodes: list[GatewayProcess], stock_supervisor: Any
) -> None:
    """A stock client of each wrapped dialect makes two calls on one connection (non-ASCII
    arguments, a map) and gets each reply, in its own dialect and seqid."""
    address = _node(nodes, tmp_path, backend)
    arg = f"é-{uuid.uuid4().hex}"
    for dialect in [*STACKS, *HTTP_STACKS]:
        with stock_client(stock_supervisor, address, dialect) as stub:
            first = stub.echo(f"{arg}-{dialect}", {"k": "v"}, 0.0)
            second = stub.echo(f"{arg}-{dialect}-2", {}, 0.0)
        assert (first.arg, first.opts, second.arg) == (
            f"{arg}-{dialect}",
            {"k": "v"},
            f"{arg}-{dialect}-2",
        ), dialect


def test_mixed_dialect_herd_shares_one_backend_call(
    tmp_path: Path, backend: CountingBackend, nodes: list[GatewayProcess], stock_supervisor: Any
) -> None:
    """Binary-framed (thriftpy2), THeader-in-framed, JSON (buffered, framed, over HTTP) and
    zlib callers making the same call at once share one backend call; each gets the reply."""
    address = _node(nodes, tmp_path, backend)
    arg = f"herd-{uuid.uuid4().hex}"

    def stock_call(dialect: str) -> Callable[[], Any]:
        def call() -> Any:
            with stock_client(stock_supervisor, address, dialect) as stub:
                return stub.echo(arg, {}, DELAY)

        return call

    calls = {dialect: stock_call(dialect) for dialect in [*STACKS, *HTTP_STACKS]}
    calls["framed-binary"] = lambda: plain_client(address, "framed", "binary")(arg, {}, DELAY)
    results = all_at_once(calls)
    answers = {
        name: (getattr(r, "arg", r), getattr(r, "call", None)) for name, r in results.items()
    }
    assert set(answers.values()) == {(arg, 1)}, answers
    assert backend.count("Supervisor", "echo", arg) == 1


def _raw(address: str, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; everything the gateway answers until it closes."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"411"),
        (b"POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", b"413"),
    ],
)
def test_bad_http_is_refused_and_others_go_on(
    tmp_path: Path,
    backend: CountingBackend,
    nodes: list[GatewayProcess],
    stock_supervisor: Any,
    request_bytes: bytes,
    status: bytes,
) -> None:
    """An HTTP request the gateway does not serve gets its error status and a close, one log
    line; a JSON-over-HTTP caller at the same time is answered."""
    address = _node(nodes, tmp_path, backend)
    node = nodes[-1]
    with stock_client(stock_supervisor, address, "http-json") as stub:
        answer = _raw(address, request_bytes)
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:100]
        assert stub.echo("still", {}, 0.0).arg == "still"
    node.process.wait_for_line(r"closing client .*HTTP request refused", stream="stderr")


def test_bad_json_body_is_answered_in_json(
    tmp_path: Path, backend: CountingBackend, nodes: list[GatewayProcess]
) -> None:
    """A JSON call whose header decodes but whose body does not is answered with a JSON
    TApplicationException carrying its seqid (PROTOCOL_ERROR), then the connection closes."""
    address = _node(nodes, tmp_path, backend)
    answer = _raw(address, b'[1,"echo",1,42,{"1":{"zzz":1}}]')
    reader = TJSONProtocol(TBufferedTransport(_Memory(answer)))
    name, mtype, seqid = reader.readMessageBegin()
    exc = TApplicationException()
    exc.read(reader)
    assert (name, mtype, seqid, exc.type) == ("echo", 3, 42, TApplicationException.PROTOCOL_ERROR)


def test_garbage_inside_zlib_closes_only_that_connection(
    tmp_path: Path, backend: CountingBackend, nodes: list[GatewayProcess], stock_supervisor: Any
) -> None:
    """A zlib stream that stops inflating closes its connection (one log line); a zlib caller
    on another connection is answered."""
    address = _node(nodes, tmp_path, backend)
    node = nodes[-1]
    with stock_client(stock_supervisor, address, "zlib-buffered-compact") as stub:
        assert _raw(address, b"\x78\x9c" + b"\xff" * 64) == b""
        assert stub.echo("zlib", {}, 0.0).arg == "zlib"
    node.process.wait_for_line(r"closing client .*zlib", stream="stderr")


def test_oversized_header_call_in_framing_is_answered_and_the_connection_goes_on(
    tmp_path: Path, backend: CountingBackend, nodes: list[GatewayProcess], stock_supervisor: Any
) -> None:
    """A THeader-in-TFramedTransport call over max_frame_size is answered PROTOCOL_ERROR
    without reaching the backend, and the next call on that connection is served."""
    config = write_config(tmp_path, backend, gateway_extra="max_frame_size = 4096")
    address = gateway(nodes, config, "oversized").address
    with stock_client(stock_supervisor, address, "header-in-framed") as stub:
        with pytest.raises(TApplicationException) as info:
            stub.echo("x" * 10_000, {}, 0.0)
        assert info.value.type == TApplicationException.PROTOCOL_ERROR
        assert stub.echo("small", {}, 0.0).arg == "small"
    assert backend.count("Supervisor", "echo", "x" * 10_000) == 0


def test_many_pipelined_http_requests_answered_at_once(
    tmp_path: Path, backend: CountingBackend, nodes: list[GatewayProcess], stock_supervisor: Any
) -> None:
    """3000 HTTP requests pipelined in one write, all answered from the cache as they are
    read, each get their response, in order (no recursion per request)."""
    methods = '[methods.echo]\nmode = "cache"\nttl = 60\n'
    address = gateway(nodes, write_config(tmp_path, backend, methods=methods), "pipelined").address
    with stock_client(stock_supervisor, address, "http-json") as stub:
        assert stub.echo("cached", {}, 0.0).arg == "cached"  # fills the cache
    call = _json_echo_call(stock_supervisor, "cached")
    request = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(call), call)
    count = 3000
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            request * count + b"POST / HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(call) + call
        )
        data = b""
        while chunk := sock.recv(1 << 20):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == count + 1
    assert backend.count("Supervisor", "echo", "cached") == 1


def _json_echo_call(supervisor: Any, arg: str) -> bytes:
    """A stock TJSONProtocol ``echo`` call as bytes."""
    from thrift.transport.TTransport import TMemoryBuffer

    sink = TMemoryBuffer()
    supervisor.Client(TJSONProtocol(sink)).send_echo(arg, {}, 0.0)
    return sink.getvalue()


def test_json_over_https_on_the_tls_listener(
    tmp_path: Path, backend: CountingBackend, nodes: list[GatewayProcess], stock_supervisor: Any
) -> None:
    """A stock THttpClient over HTTPS (JSON protocol) on ``tls_listen`` is answered: the
    dialects are detected on the decrypted stream, as on the plain port."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path, ca_path = tmp_path / "s.pem", tmp_path / "s.key", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    key_path.write_bytes(cert.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_path))
    extra = f'tls_listen = "127.0.0.1:0"\ntls_cert = "{cert_path}"\ntls_key = "{key_path}"'
    node = gateway(nodes, write_config(tmp_path, backend, gateway_extra=extra), "https")
    port = int(node.process.wait_for_line(r" tls 127\.0\.0\.1:(\d+)").group(1))
    # ssl_context: with cafile alone this THttpClient also loads a client certificate chain.
    context = ssl.create_default_context(cafile=str(ca_path))
    transport = THttpClient(f"https://127.0.0.1:{port}/", ssl_context=context)
    stub = stock_supervisor.Client(TJSONProtocol(transport))
    transport.open()
    try:
        assert stub.echo("über https", {}, 0.0).arg == "über https"
    finally:
        transport.close()


def test_mixed_herd_with_tls_callers_shares_one_backend_call(
    tmp_path: Path, backend: CountingBackend, nodes: list[GatewayProcess], stock_supervisor: Any
) -> None:
    """TLS callers (TSSLSocket framed binary, THeader in framed over TLS, JSON over HTTPS on
    ``tls_listen``) and plain callers (binary framed, JSON over HTTP) making the same call at
    once share one backend call; each gets the reply."""
    import trustme
    from thrift.transport.TSSLSocket import TSSLSocket

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path, ca_path = tmp_path / "s.pem", tmp_path / "s.key", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    key_path.write_bytes(cert.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_path))
    extra = f'tls_listen = "127.0.0.1:0"\ntls_cert = "{cert_path}"\ntls_key = "{key_path}"'
    node = gateway(nodes, write_config(tmp_path, backend, gateway_extra=extra), "tlsherd")
    tls_port = int(node.process.wait_for_line(r" tls 127\.0\.0\.1:(\d+)").group(1))
    arg = f"tls-herd-{uuid.uuid4().hex}"

    def over_tls(make_transport: Callable[[Any], Any], make_protocol: Callable[[Any], Any]) -> Any:
        sock = TSSLSocket("127.0.0.1", tls_port, ca_certs=str(ca_path), server_hostname="127.0.0.1")
        sock.setTimeout(10_000)
        protocol = make_protocol(make_transport(sock))
        protocol.trans.open()
        try:
            return stock_supervisor.Client(protocol).echo(arg, {}, DELAY)
        finally:
            protocol.trans.close()

    def https_json() -> Any:
        context = ssl.create_default_context(cafile=str(ca_path))
        transport = THttpClient(f"https://127.0.0.1:{tls_port}/", ssl_context=context)
        transport.open()
        try:
            return stock_supervisor.Client(TJSONProtocol(transport)).echo(arg, {}, DELAY)
        finally:
            transport.close()

    def plain(dialect: str) -> Callable[[], Any]:
        def call() -> Any:
            with stock_client(stock_supervisor, node.address, dialect) as stub:
                return stub.echo(arg, {}, DELAY)

        return call

    calls: dict[str, Callable[[], Any]] = {
        "tls-framed-binary": lambda: over_tls(TFramedTransport, TBinaryProtocol),
        "tls-header-in-framed": lambda: over_tls(
            TFramedTransport, lambda t: THeaderProtocol(t, [THeaderClientType.HEADERS])
        ),
        "https-json": https_json,
        "http-json": plain("http-json"),
        "framed-binary": lambda: plain_client(node.address, "framed", "binary")(arg, {}, DELAY),
    }
    results = all_at_once(calls)
    answers = {
        name: (getattr(r, "arg", r), getattr(r, "call", None)) for name, r in results.items()
    }
    assert set(answers.values()) == {(arg, 1)}, answers
    assert backend.count("Supervisor", "echo", arg) == 1


def _header_zlib_call(supervisor: Any, arg: str) -> bytes:
    """A stock THeader call (binary, zlib transform) as the bytes it puts on the socket."""
    from thrift.transport.THeaderTransport import THeaderTransformID
    from thrift.transport.TTransport import TMemoryBuffer

    sink = TMemoryBuffer()
    protocol = THeaderProtocol(sink, [THeaderClientType.HEADERS])
    protocol.add_transform(THeaderTransformID.ZLIB)
    supervisor.Client(protocol).send_echo(arg, {}, 0.0)
    return sink.getvalue()


def _one_reply_frame(address: str, data: bytes) -> tuple[bytes, Any]:
    """Send ``data``; the first THeader frame answered, parsed: (payload, HeaderInfo)."""
    from gateway.thrift import parse_frame

    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
            chunk = sock.recv(65536)
            assert chunk, "closed before a whole reply frame"
            buf += chunk
    return parse_frame(buf[4 : 4 + int.from_bytes(buf[:4], "big")])


@pytest.mark.parametrize("enabled", [False, True])
def test_header_zlib_replies(
    tmp_path: Path,
    backend: CountingBackend,
    nodes: list[GatewayProcess],
    stock_supervisor: Any,
    enabled: bool,
) -> None:
    """A zlib-compressed THeader call is answered zlib-compressed with
    ``header_zlib_replies = true``, uncompressed by default; the reply is right either way."""
    extra = "header_zlib_replies = true" if enabled else ""
    address = gateway(
        nodes, write_config(tmp_path, backend, gateway_extra=extra), "zlib-replies"
    ).address
    payload, info = _one_reply_frame(address, _header_zlib_call(stock_supervisor, "z" * 3000))
    assert info.transforms == ((1,) if enabled else ())
    assert b"z" * 3000 in payload


class _Memory:
    """A readable thrift transport over bytes (TMemoryBuffer without the write side)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, size: int) -> bytes:
        chunk = self._data[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk

    def isOpen(self) -> bool:
        return True
