"""TLS for real: `gateway serve` with a `tls_listen` port, mTLS, certificate rotation on SIGHUP,
TLS to a backend, and `key_peer` - certificates made by trustme, the stock thrift client over
TSSLSocket, the example backend (plain, or behind Twisted TLS: tests/tools/tls_backend.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from thrift.protocol import TBinaryProtocol
from thrift.Thrift import TApplicationException
from thrift.transport import TSSLSocket, TTransport

from clients.calls import ALERT, read_result, write_call
from gateway.processes import (
    ExampleBackend,
    GatewayProcess,
    backend_count,
    call_once,
    healthz,
    metric,
    start_example_backend,
    start_gateway,
    start_process,
    wait_for,
)

pytestmark = pytest.mark.integration

TOOLS = Path(__file__).parent / "tools"
TLS_PORT = r" tls 127\.0\.0\.1:(\d+)"


@dataclass
class Pki:
    """Files of one trustme CA: a server certificate for 127.0.0.1 and client certificates."""

    directory: Path
    ca: trustme.CA
    ca_pem: Path

    def server(self, name: str = "server") -> tuple[Path, Path]:
        cert = self.ca.issue_cert("127.0.0.1", "localhost", common_name=name)
        return self._write(name, cert)

    def client(self, name: str) -> tuple[Path, Path]:
        return self._write(name, self.ca.issue_cert(f"{name}.clients.test", common_name=name))

    def _write(self, name: str, cert: trustme.LeafCert) -> tuple[Path, Path]:
        cert_path, key_path = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        key_path.write_bytes(cert.private_key_pem.bytes())
        return cert_path, key_path


def make_pki(directory: Path, name: str) -> Pki:
    directory.mkdir()
    ca = trustme.CA(organization_name=name)
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    return Pki(directory, ca, directory / "ca.pem")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", "gateway tests")


@pytest.fixture
def backend() -> Iterator[ExampleBackend]:
    with start_example_backend(delay=0.5) as b:
        yield b


class TLSClient:
    """The stock thrift Supervisor client over TSSLSocket (framed, binary)."""

    def __init__(
        self, port: int, ca: Path, cert: tuple[Path, Path] | None = None, name: str = "127.0.0.1"
    ) -> None:
        certfile, keyfile = (str(cert[0]), str(cert[1])) if cert else (None, None)
        self.socket = TSSLSocket.TSSLSocket(
            "127.0.0.1",
            port,
            ca_certs=str(ca),
            certfile=certfile,
            keyfile=keyfile,
            cert_reqs=ssl.CERT_REQUIRED,
            server_hostname=name,
        )
        self.socket.setTimeout(10_000)
        self.transport = TTransport.TFramedTransport(self.socket)
        self.protocol = TBinaryProtocol.TBinaryProtocol(self.transport)
        self.transport.open()
        self.seqid = 0

    def alert(self, text: str) -> str:
        """``alertSupervisor(text)`` with the stock library's binary protocol."""
        self.seqid += 1
        write_call(self.protocol, ALERT, self.seqid, message=text)
        self.transport.flush()
        _, mtype, seqid = self.protocol.readMessageBegin()
        assert seqid == self.seqid
        reply: str = read_result(self.protocol, ALERT, mtype)
        return reply

    def server_subject(self) -> str:
        """The CN of the certificate the gateway presented on this connection."""
        handle = self.socket.handle
        assert handle is not None
        subject = dict(pair[0] for pair in handle.getpeercert()["subject"])
        return str(subject["commonName"])

    def close(self) -> None:
        self.transport.close()


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def gateway_toml(pki: Pki, backend: str, *, client_ca: bool = False, methods: str = "") -> str:
    cert, key = pki.directory / "server.pem", pki.directory / "server.key"
    mtls = f'tls_client_ca = "{pki.ca_pem}"\n' if client_ca else ""
    return (
        f'[gateway]\nlisten = "127.0.0.1:0"\ntls_listen = "127.0.0.1:0"\n'
        f'tls_cert = "{cert}"\ntls_key = "{key}"\n{mtls}'
        f'[backends.default]\naddress = "{backend}"\n{methods}'
    )


def start_tls_gateway(config: Path, admin: bool = False) -> tuple[GatewayProcess, int]:
    gw = start_gateway(config=config, admin=admin)
    match = gw.process.wait_for_line(TLS_PORT)
    return gw, int(match.group(1))


def test_stock_client_calls_through_the_tls_port_and_plain_port_still_works(
    pki: Pki, backend: ExampleBackend, tmp_path: Path
) -> None:
    """A stock thrift client over TSSLSocket is answered on tls_listen; the plain port too."""
    pki.server()
    config = write_config(tmp_path / "gw.toml", gateway_toml(pki, backend.address))
    gw, tls_port = start_tls_gateway(config)
    with gw:
        client = TLSClient(tls_port, pki.ca_pem)
        try:
            assert client.alert("over tls") == "ack:over tls"
            assert client.server_subject() == "server"
        finally:
            client.close()
        assert call_once(gw, lambda c: c.alert("plain")) == "ack:plain"


def test_mtls_refuses_a_client_without_a_certificate_with_one_log_line(
    pki: Pki, backend: ExampleBackend, tmp_path: Path
) -> None:
    """With tls_client_ca, a client without a certificate gets no answer and the gateway logs
    one line; a client with a certificate the CA signed is answered."""
    pki.server()
    alice = pki.client("alice")
    config = write_config(tmp_path / "gw.toml", gateway_toml(pki, backend.address, client_ca=True))
    gw, tls_port = start_tls_gateway(config)
    with gw:
        with pytest.raises((TTransport.TTransportException, ssl.SSLError, OSError, EOFError)):
            anonymous = TLSClient(tls_port, pki.ca_pem)
            try:
                anonymous.alert("who am I")
            finally:
                anonymous.close()
        gw.process.wait_for_line(r"TLS handshake failed", stream="stderr")
        client = TLSClient(tls_port, pki.ca_pem, alice)
        try:
            assert client.alert("alice here") == "ack:alice here"
        finally:
            client.close()
        refusals = [line for line in gw.process.stderr_lines if "TLS handshake failed" in line]
        assert len(refusals) == 1, refusals


def test_sighup_rotates_the_certificate_and_open_connections_keep_going(
    pki: Pki, backend: ExampleBackend, tmp_path: Path
) -> None:
    """After the certificate files are replaced and SIGHUP sent, new connections get the new
    certificate while a connection opened before keeps being answered."""
    pki.server("old")
    os.replace(pki.directory / "old.pem", pki.directory / "server.pem")
    os.replace(pki.directory / "old.key", pki.directory / "server.key")
    config = write_config(tmp_path / "gw.toml", gateway_toml(pki, backend.address))
    gw, tls_port = start_tls_gateway(config, admin=True)
    with gw:
        before = TLSClient(tls_port, pki.ca_pem)
        try:
            assert before.alert("1") == "ack:1"
            assert before.server_subject() == "old"
            health = healthz(gw.admin_url)
            assert health is not None and health["tls"]["listening"] is True
            assert health["tls"]["cert_subject"].startswith("CN=old")
            pki.server("new")
            os.replace(pki.directory / "new.pem", pki.directory / "server.pem")
            os.replace(pki.directory / "new.key", pki.directory / "server.key")
            os.kill(gw.pid, signal.SIGHUP)
            gw.process.wait_for_line(r"reloaded", stream="stderr")
            after = TLSClient(tls_port, pki.ca_pem)
            try:
                assert after.server_subject() == "new"
                assert after.alert("2") == "ack:2"
            finally:
                after.close()
            assert before.alert("3") == "ack:3"  # same connection, old certificate
            assert before.server_subject() == "old"
            health = healthz(gw.admin_url)
            assert health is not None and health["tls"]["cert_subject"].startswith("CN=new")
        finally:
            before.close()


def test_a_bad_certificate_file_on_sighup_keeps_the_running_one(
    pki: Pki, backend: ExampleBackend, tmp_path: Path
) -> None:
    """A reload whose certificate file is not PEM fails with one line; TLS keeps working."""
    pki.server()
    config = write_config(tmp_path / "gw.toml", gateway_toml(pki, backend.address))
    gw, tls_port = start_tls_gateway(config)
    with gw:
        (pki.directory / "server.pem").write_text("not a certificate\n")
        os.kill(gw.pid, signal.SIGHUP)
        line = gw.process.wait_for_line(r"reload failed", stream="stderr")
        assert "gateway.tls_cert" in line.string
        client = TLSClient(tls_port, pki.ca_pem)
        try:
            assert client.alert("still") == "ack:still"
        finally:
            client.close()


def _same_time_calls(clients: list[TLSClient], text: str) -> list[str]:
    replies: list[str] = [""] * len(clients)
    barrier = threading.Barrier(len(clients))

    def run(i: int) -> None:
        barrier.wait()
        replies[i] = clients[i].alert(text)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return replies


@pytest.mark.parametrize(("second", "backend_calls"), [("bob", 2), ("alice", 1)])
def test_key_peer_keeps_different_certificate_subjects_apart(
    pki: Pki, backend: ExampleBackend, tmp_path: Path, second: str, backend_calls: int
) -> None:
    """With key_peer, concurrent equal calls of two different client certificates each reach
    the backend; two connections with the same subject share one backend call."""
    pki.server()
    alice, other = pki.client("alice"), pki.client(second) if second != "alice" else None
    methods = "[methods.alertSupervisor]\nkey_peer = true\n"
    toml = gateway_toml(pki, backend.address, client_ca=True, methods=methods)
    gw, tls_port = start_tls_gateway(write_config(tmp_path / "gw.toml", toml))
    with gw:
        first = TLSClient(tls_port, pki.ca_pem, alice)
        second_client = TLSClient(tls_port, pki.ca_pem, other or alice)
        try:
            replies = _same_time_calls([first, second_client], "same args")
        finally:
            first.close()
            second_client.close()
        assert replies == ["ack:same args"] * 2
        assert backend_count(backend) == backend_calls


def test_without_key_peer_different_subjects_share_one_backend_call(
    pki: Pki, backend: ExampleBackend, tmp_path: Path
) -> None:
    """key_peer is off by default: callers with different certificates coalesce."""
    pki.server()
    alice, bob = pki.client("alice"), pki.client("bob")
    toml = gateway_toml(pki, backend.address, client_ca=True)
    gw, tls_port = start_tls_gateway(write_config(tmp_path / "gw.toml", toml))
    with gw:
        clients = [TLSClient(tls_port, pki.ca_pem, alice), TLSClient(tls_port, pki.ca_pem, bob)]
        try:
            assert _same_time_calls(clients, "shared") == ["ack:shared"] * 2
        finally:
            for client in clients:
                client.close()
        assert backend_count(backend) == 1


# -- TLS to backends ------------------------------------------------------------------------


@pytest.fixture
def tls_backend(tmp_path: Path) -> Iterator[tuple[ExampleBackend, Pki]]:
    backend_pki = make_pki(tmp_path / "backend-pki", "backend CA")
    cert, key = backend_pki.server("backend")
    argv = [sys.executable, str(TOOLS / "tls_backend.py"), str(cert), str(key)]
    process = start_process(argv)
    try:
        yield ExampleBackend.from_process(process), backend_pki
    finally:
        process.stop()


@pytest.fixture
def mtls_backend(tmp_path: Path) -> Iterator[tuple[ExampleBackend, Pki]]:
    """A TLS backend that requires a client certificate signed by its own CA."""
    backend_pki = make_pki(tmp_path / "mtls-pki", "backend CA")
    cert, key = backend_pki.server("backend")
    argv = [sys.executable, str(TOOLS / "tls_backend.py"), str(cert), str(key)]
    process = start_process([*argv, str(backend_pki.ca_pem)])
    try:
        yield ExampleBackend.from_process(process), backend_pki
    finally:
        process.stop()


def test_a_client_certificate_is_presented_to_a_backend_that_requires_one(
    mtls_backend: tuple[ExampleBackend, Pki], tmp_path: Path
) -> None:
    """With tls_cert/tls_key the gateway passes a backend's mTLS; without them the backend
    refuses the handshake and the caller is told so."""
    backend, backend_pki = mtls_backend
    cert, key = backend_pki.client("gateway")
    ca = f'tls_ca = "{backend_pki.ca_pem}"\n'
    with_cert = backend_tls_toml(backend.address, ca + f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    with start_gateway(config=write_config(tmp_path / "with.toml", with_cert)) as gw:
        assert call_once(gw, lambda c: c.alert("mtls")) == "ack:mtls"
    without = backend_tls_toml(backend.address, ca)
    with start_gateway(config=write_config(tmp_path / "without.toml", without)) as gw:
        gw.process.wait_for_line(r"TLS handshake with backend", stream="stderr")
        with pytest.raises(TApplicationException, match="TLS handshake"):
            call_once(gw, lambda c: c.alert("anonymous"))


def backend_tls_toml(address: str, options: str) -> str:
    return (
        f'[gateway]\nlisten = "127.0.0.1:0"\n'
        f'[backends.default]\naddress = "{address}"\ntls = true\n{options}'
    )


def test_calls_reach_a_tls_backend_verified_against_tls_ca(
    tls_backend: tuple[ExampleBackend, Pki], tmp_path: Path
) -> None:
    """A backend with tls = true and its CA as tls_ca answers through the gateway."""
    backend, backend_pki = tls_backend
    toml = backend_tls_toml(backend.address, f'tls_ca = "{backend_pki.ca_pem}"\n')
    with start_gateway(config=write_config(tmp_path / "gw.toml", toml)) as gw:
        assert call_once(gw, lambda c: c.alert("to tls")) == "ack:to tls"


@pytest.mark.parametrize("wrong", ["ca", "server_name"])
def test_a_wrong_ca_or_server_name_fails_the_handshake_with_one_log_line(
    tls_backend: tuple[ExampleBackend, Pki], tmp_path: Path, wrong: str
) -> None:
    """A backend certificate that does not verify (another CA, another name) fails the
    handshake: the caller gets a TApplicationException saying so, the log has one line."""
    backend, backend_pki = tls_backend
    if wrong == "ca":
        other = make_pki(tmp_path / "other-pki", "someone else")
        options = f'tls_ca = "{other.ca_pem}"\n'
    else:
        options = f'tls_ca = "{backend_pki.ca_pem}"\ntls_server_name = "wrong.example"\n'
    toml = backend_tls_toml(backend.address, options)
    with start_gateway(config=write_config(tmp_path / "gw.toml", toml), admin=True) as gw:
        gw.process.wait_for_line(r"TLS handshake with backend", stream="stderr")
        with pytest.raises(TApplicationException) as raised:
            call_once(gw, lambda c: c.alert("nope"))
        assert "TLS handshake with backend" in str(raised.value.message)
        with pytest.raises(TApplicationException):
            call_once(gw, lambda c: c.alert("again"))
        lines = [line for line in gw.process.stderr_lines if "TLS handshake" in line]
        assert len(lines) == 1, lines
        assert metric(gw.admin_url, "gateway_errors_by_kind_total", kind="backend_tls") == 2


def test_a_backend_that_never_answers_the_handshake_fails_within_connect_timeout(
    tmp_path: Path,
) -> None:
    """A TLS backend whose port accepts TCP but never speaks TLS fails the handshake after
    connect_timeout: the caller gets the TLS error instead of waiting out the call."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes TCP connects; nobody ever reads or writes
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        toml = backend_tls_toml(address, "connect_timeout = 0.5\n")
        with start_gateway(config=write_config(tmp_path / "gw.toml", toml)) as gw:
            line = gw.process.wait_for_line(r"TLS handshake with backend", stream="stderr")
            assert "no handshake within 0.5s" in line.string
            with pytest.raises(TApplicationException, match="TLS handshake"):
                call_once(gw, lambda c: c.alert("silent"))


def test_sighup_can_start_requiring_client_certificates(
    pki: Pki, backend: ExampleBackend, tmp_path: Path
) -> None:
    """tls_client_ca added on SIGHUP: new anonymous clients are refused, a client connected
    without a certificate before keeps being answered."""
    pki.server()
    config = write_config(tmp_path / "gw.toml", gateway_toml(pki, backend.address))
    gw, tls_port = start_tls_gateway(config)
    with gw:
        before = TLSClient(tls_port, pki.ca_pem)
        try:
            assert before.alert("a") == "ack:a"
            write_config(config, gateway_toml(pki, backend.address, client_ca=True))
            os.kill(gw.pid, signal.SIGHUP)
            gw.process.wait_for_line(r"reloaded", stream="stderr")
            with pytest.raises((TTransport.TTransportException, ssl.SSLError, OSError, EOFError)):
                anonymous = TLSClient(tls_port, pki.ca_pem)
                try:
                    anonymous.alert("b")
                finally:
                    anonymous.close()
            assert before.alert("c") == "ack:c"
        finally:
            before.close()


def test_garbage_on_the_tls_port_harms_no_call_in_flight(
    pki: Pki, backend: ExampleBackend, tmp_path: Path
) -> None:
    """Plain Thrift bytes sent to the TLS port end that connection with one log line; a TLS
    caller's call in flight at the time is answered."""
    pki.server()
    config = write_config(tmp_path / "gw.toml", gateway_toml(pki, backend.address))
    gw, tls_port = start_tls_gateway(config)
    with gw:
        client = TLSClient(tls_port, pki.ca_pem)
        try:
            reply: list[str] = []
            caller = threading.Thread(target=lambda: reply.append(client.alert("in flight")))
            caller.start()  # the backend takes 0.5 s to answer
            with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw:
                raw.sendall(b"\x00\x00\x00\x0c\x80\x01\x00\x01\x00\x00\x00\x00garbage!")
                while raw.recv(4096):  # maybe an alert, then EOF: the gateway hangs up
                    pass
            caller.join(timeout=20)
            assert reply == ["ack:in flight"]
        finally:
            client.close()
        gw.process.wait_for_line(r"TLS handshake failed", stream="stderr")
        refusals = [line for line in gw.process.stderr_lines if "TLS handshake failed" in line]
        assert len(refusals) == 1, refusals


@pytest.mark.parametrize(("second", "backend_calls"), [("bob", 2), ("alice", 1)])
def test_key_peer_identity_is_the_same_on_every_node_of_a_cluster(
    pki: Pki, tmp_path: Path, second: str, backend_calls: int
) -> None:
    """Two nodes sharing Redis: the same certificate subject on both coalesces into one
    backend call, two subjects make two - every node derives the same identity."""
    from gateway.localredis import RedisServer

    pki.server()
    alice = pki.client("alice")
    other = pki.client(second) if second != "alice" else alice
    methods = "[methods.alertSupervisor]\nkey_peer = true\n"
    redis = RedisServer().start()
    try:
        with start_example_backend(delay=1.0) as slow:
            toml = gateway_toml(pki, slow.address, client_ca=True, methods=methods)
            config = write_config(tmp_path / "gw.toml", toml)
            nodes = []
            try:
                for name in ("a", "b"):
                    gw = start_gateway(config=config, redis=redis.url, node_id=name)
                    nodes.append((gw, int(gw.process.wait_for_line(TLS_PORT).group(1))))
                clients = [
                    TLSClient(nodes[0][1], pki.ca_pem, alice),
                    TLSClient(nodes[1][1], pki.ca_pem, other),
                ]
                try:
                    assert _same_time_calls(clients, "cluster") == ["ack:cluster"] * 2
                finally:
                    for client in clients:
                        client.close()
                assert backend_count(slow) == backend_calls
            finally:
                for gw, _ in nodes:
                    gw.stop()
    finally:
        redis.close()


def test_a_tls_client_that_never_reads_its_replies_stops_being_read(
    pki: Pki, tmp_path: Path
) -> None:
    """Backpressure works under TLS: a TLS client pipelining calls without reading replies is
    paused once over max_unsent_bytes of (encrypted) replies wait for it."""
    from thrift.Thrift import TType
    from thrift_messages import message

    from gateway.thrift import ProtocolKind, frame

    pki.server()
    with start_example_backend() as fast:
        extra = "max_unsent_bytes = 65536\nmax_pipelined = 16\n"
        toml = gateway_toml(pki, fast.address).replace("[backends.", extra + "[backends.", 1)
        config = write_config(tmp_path / "gw.toml", toml)
        gw = start_gateway(config=config, admin=True)
        with gw:
            tls_port = int(gw.process.wait_for_line(TLS_PORT).group(1))
            context = ssl.create_default_context(cafile=str(pki.ca_pem))
            raw = socket.create_connection(("127.0.0.1", tls_port), timeout=30)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
            stop = threading.Event()

            def flood() -> None:
                body = b"y" * 8192
                seqid = 0
                with contextlib.suppress(OSError):
                    while not stop.is_set():
                        seqid += 1
                        call = message(
                            ProtocolKind.BINARY, "alertSupervisor",
                            [(1, TType.STRING, body)], seqid=seqid,
                        )  # fmt: skip
                        sock.sendall(frame(call))

            writer = threading.Thread(target=flood, daemon=True)
            writer.start()
            try:
                wait_for(
                    lambda: metric(gw.admin_url, "gateway_reads_paused_total", reason="unsent"),
                    lambda paused: (paused or 0) >= 1,
                    "the gateway paused reading the TLS client",
                    timeout=30,
                )
            finally:
                stop.set()
                # The socket itself, not its TLS layer, which the writer thread is using:
                # that wakes its blocked sendall with an error.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
                writer.join(timeout=10)
                sock.close()
