"""The example backend (``gateway example-backend``), the blocking client and the herd driver."""

from __future__ import annotations

import itertools
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocolFactory
from thrift.Thrift import TApplicationException
from thrift.transport import TTransport

from clients.calls import ALERT, decode_reply, encode_call
from clients.sync_client import ExampleClient
from gateway.examples.gen.poetry.ttypes import PoemNotFound
from gateway.examples.gen.supervisor.ttypes import SupervisorBusy
from gateway.localredis import free_port
from gateway.processes import (
    ExampleBackend,
    example_backend_argv,
    gateway_cli,
    run_herd,
    start_example_backend,
    start_process,
)
from gateway.thrift import MessageReader, ProtocolKind, TransportKind


@pytest.fixture(scope="module")
def supervisor() -> Iterator[ExampleBackend]:
    """One binary/framed Supervisor backend shared by the tests that do not count calls."""
    backend = start_example_backend("supervisor")
    try:
        yield backend
    finally:
        backend.stop()


@pytest.fixture
def fresh_supervisor() -> Iterator[ExampleBackend]:
    """A Supervisor backend of the test's own, so its call counters start at zero."""
    backend = start_example_backend("supervisor")
    try:
        yield backend
    finally:
        backend.stop()


@pytest.fixture(scope="module")
def poetry() -> Iterator[ExampleBackend]:
    """A binary/framed Poetry backend."""
    backend = start_example_backend("poetry")
    try:
        yield backend
    finally:
        backend.stop()


def client_for(
    backend: ExampleBackend,
    protocol: str = "binary",
    transport: str = "framed",
    multiplexed: bool = False,
) -> ExampleClient:
    return ExampleClient(
        backend.host,
        backend.port,
        protocol=protocol,
        transport=transport,
        multiplexed=multiplexed,
        timeout=10.0,
    )


def alert_in_thread(
    backend: ExampleBackend, message: str, outcome: list[tuple[str, float]]
) -> threading.Thread:
    """Call alertSupervisor from a thread; ``outcome`` receives (reply, seconds taken)."""

    def alert() -> None:
        with client_for(backend) as client:
            started = time.monotonic()
            reply = client.alert(message)
            outcome.append((reply, time.monotonic() - started))

    thread = threading.Thread(target=alert, daemon=True)
    thread.start()
    return thread


@pytest.mark.integration
def test_alert_returns_ack(supervisor: ExampleBackend) -> None:
    """alertSupervisor answers "ack:" followed by the message."""
    with client_for(supervisor) as client:
        assert client.alert("disk full") == "ack:disk full"


@pytest.mark.integration
def test_busy_message_raises_supervisor_busy(supervisor: ExampleBackend) -> None:
    """A message starting with "busy:" raises the declared SupervisorBusy carrying it."""
    with client_for(supervisor) as client, pytest.raises(SupervisorBusy) as caught:
        client.alert("busy:lunch")
    assert caught.value.reason == "busy:lunch"


@pytest.mark.integration
def test_crash_message_gives_internal_error(supervisor: ExampleBackend) -> None:
    """A message starting with "crash:" comes back as TApplicationException INTERNAL_ERROR."""
    with client_for(supervisor) as client, pytest.raises(TApplicationException) as caught:
        client.alert("crash:boom")
    assert caught.value.type == TApplicationException.INTERNAL_ERROR


@pytest.mark.integration
def test_connection_survives_a_crashing_call(supervisor: ExampleBackend) -> None:
    """After an INTERNAL_ERROR reply the same connection still answers the next call."""
    with client_for(supervisor) as client:
        with pytest.raises(TApplicationException):
            client.alert("crash:boom")
        assert client.alert("next") == "ack:next"


@pytest.mark.integration
def test_backend_stats_counts_each_method(fresh_supervisor: ExampleBackend) -> None:
    """backendStats reports the calls received per method, itself included."""
    with client_for(fresh_supervisor) as client:
        client.alert("a")
        client.alert("b")
        client.notify("n")  # oneway, and processed before the stats call sent after it
        assert client.backend_stats() == {"alertSupervisor": 2, "notify": 1, "backendStats": 1}


@pytest.mark.integration
def test_backend_stats_counts_calls_on_arrival() -> None:
    """A call still waiting out the backend's delay is already counted, backendStats answers
    at once meanwhile, and the delayed call then gets its own reply."""
    delay = 2.0
    backend = start_example_backend("supervisor", delay=delay)
    try:
        outcome: list[tuple[str, float]] = []
        slow = alert_in_thread(backend, "slow", outcome)
        with client_for(backend) as client:
            deadline = time.monotonic() + 5
            while client.backend_stats()["alertSupervisor"] == 0:
                assert time.monotonic() < deadline, "the slow call never arrived"
                time.sleep(0.05)
            assert slow.is_alive(), "the slow call answered before its delay"
            started = time.monotonic()
            client.backend_stats()
            assert time.monotonic() - started < 1.0, "backendStats waited for the delay"
            assert slow.is_alive(), "the slow call answered before its delay"
        slow.join(timeout=10)
        assert len(outcome) == 1, "the slow call never answered"
        reply, elapsed = outcome[0]
        assert reply == "ack:slow"
        assert elapsed >= delay
    finally:
        backend.stop()


COMBOS = list(itertools.product(["binary", "compact"], ["framed", "buffered"], [False, True]))


@pytest.mark.integration
@pytest.mark.parametrize(("protocol", "transport", "multiplexed"), COMBOS)
def test_every_protocol_transport_combination_answers(
    protocol: str, transport: str, multiplexed: bool
) -> None:
    """Each protocol x transport x multiplexing combination serves alert, busy and stats."""
    backend = start_example_backend(
        "supervisor", protocol=protocol, transport=transport, multiplexed=multiplexed
    )
    try:
        with client_for(
            backend, protocol=protocol, transport=transport, multiplexed=multiplexed
        ) as client:
            assert client.alert("hi") == "ack:hi"
            with pytest.raises(SupervisorBusy):
                client.alert("busy:x")
            assert client.backend_stats()["alertSupervisor"] == 2
    finally:
        backend.stop()


@pytest.mark.integration
def test_plain_call_to_multiplexed_backend_is_unknown_method() -> None:
    """A call without a service prefix gets UNKNOWN_METHOD back instead of a hang-up."""
    backend = start_example_backend("supervisor", multiplexed=True)
    try:
        with client_for(backend) as client, pytest.raises(TApplicationException) as caught:
            client.alert("hi")
        assert caught.value.type == TApplicationException.UNKNOWN_METHOD
    finally:
        backend.stop()


@pytest.mark.integration
def test_buffered_backend_reassembles_a_call_sent_byte_by_byte() -> None:
    """The unframed server waits for a whole message however the bytes are split."""
    backend = start_example_backend("supervisor", transport="buffered")
    try:
        factory = TBinaryProtocolFactory()
        call = encode_call(factory, ALERT, 7, message="drip")
        with socket.create_connection((backend.host, backend.port), timeout=10) as sock:
            for i in range(len(call)):
                sock.sendall(call[i : i + 1])
                time.sleep(0.001)
            reply = _read_unframed_reply(sock)
        assert decode_reply(factory, reply, ALERT) == (7, "ack:drip")
    finally:
        backend.stop()


def _read_unframed_reply(sock: socket.socket) -> bytes:
    reader = MessageReader(TransportKind.BUFFERED, ProtocolKind.BINARY)
    messages: list[bytes] = []
    while not messages:
        chunk = sock.recv(4096)
        assert chunk, "backend closed the connection"
        messages = reader.feed(chunk)
    return messages[0]


@pytest.mark.integration
def test_get_poem_contains_title(poetry: ExampleBackend) -> None:
    """getPoem answers a text containing the requested title."""
    with client_for(poetry) as client:
        assert "ode to herds" in client.get_poem("ode to herds")


@pytest.mark.integration
def test_missing_title_raises_poem_not_found(poetry: ExampleBackend) -> None:
    """A title starting with "missing:" raises the declared PoemNotFound."""
    with client_for(poetry) as client, pytest.raises(PoemNotFound) as caught:
        client.get_poem("missing:lost")
    assert caught.value.title == "missing:lost"


@pytest.mark.integration
def test_poetry_backend_stats_counts_get_poem() -> None:
    """The Poetry service's backendStats counts getPoem calls."""
    backend = start_example_backend("poetry")
    try:
        with client_for(backend) as client:
            client.get_poem("one")
            assert client.backend_stats("poetry") == {"getPoem": 1, "backendStats": 1}
    finally:
        backend.stop()


@pytest.mark.integration
def test_herd_against_backend_gets_only_right_replies(fresh_supervisor: ExampleBackend) -> None:
    """Driven directly at a backend, the herd makes clients x rounds calls, all answered right."""
    summary = run_herd(
        [fresh_supervisor.address], "--clients", "40", "--keys", "5", "--rounds", "3"
    )
    assert (summary["client_calls"], summary["ok"]) == (120, 120)
    assert (summary["wrong_replies"], summary["errors"], summary["stray_replies"]) == (0, 0, 0)


@pytest.mark.integration
def test_herd_counts_rejected_calls_as_errors(poetry: ExampleBackend) -> None:
    """Calls the backend rejects are errors bucketed by message, never wrong replies."""
    summary = run_herd([poetry.address], "--clients", "4", "--keys", "2", "--rounds", "2")
    assert (summary["errors"], summary["wrong_replies"]) == (8, 0)
    assert summary["error_kinds"] == {
        "TApplicationException(N): Unknown function alertSupervisor": 8
    }


@pytest.mark.integration
def test_bad_listen_address_exits_2_with_one_line() -> None:
    """An unparsable --listen ends the backend at once with exit code 2 and one stderr line."""
    done = subprocess.run(
        gateway_cli("example-backend", "--listen", "nowhere", "--service", "supervisor"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--listen" in done.stderr


@pytest.mark.integration
def test_sigterm_exits_0(fresh_supervisor: ExampleBackend) -> None:
    """SIGTERM stops a listening backend with exit code 0."""
    assert fresh_supervisor.stop() == 0


@pytest.mark.integration
def test_busy_port_exits_1() -> None:
    """A port another socket already holds ends the backend with exit code 1."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        port = holder.getsockname()[1]
        process = start_process(
            gateway_cli("example-backend", "--listen", f"127.0.0.1:{port}", "--service", "poetry")
        )
        try:
            process.proc.wait(timeout=30)
            assert process.returncode == 1
        finally:
            process.stop()


def test_decode_reply_rejects_a_reply_to_another_method() -> None:
    """A reply naming another method is refused with WRONG_METHOD_NAME."""
    factory = TBinaryProtocolFactory()
    buf = TTransport.TMemoryBuffer()
    prot = factory.getProtocol(buf)
    prot.writeMessageBegin("getPoem", 2, 1)
    prot.writeStructBegin("r")
    prot.writeFieldStop()
    prot.writeStructEnd()
    prot.writeMessageEnd()
    with pytest.raises(TApplicationException) as caught:
        decode_reply(factory, buf.getvalue(), ALERT)
    assert caught.value.type == TApplicationException.WRONG_METHOD_NAME


def pipeline_two(backend: ExampleBackend) -> list[str]:
    """Send a slow call then a fast one on one connection; the replies' results in the
    order they arrive."""
    factory = TBinaryProtocolFactory()
    calls = [encode_call(factory, ALERT, i + 1, message=m) for i, m in enumerate(["slow", "f"])]
    with socket.create_connection((backend.host, backend.port), timeout=10) as sock:
        sock.sendall(b"".join(len(c).to_bytes(4, "big") + c for c in calls))
        results = []
        buffered = b""
        while len(results) < 2:
            buffered += sock.recv(65536)
            while len(buffered) >= 4 and len(buffered) >= 4 + int.from_bytes(buffered[:4]):
                size = int.from_bytes(buffered[:4])
                results.append(decode_reply(factory, buffered[4 : 4 + size], ALERT)[1])
                buffered = buffered[4 + size :]
    return results


@pytest.mark.integration
def test_calls_on_one_connection_are_answered_in_order() -> None:
    """By default, as Apache Thrift's servers do, a fast call pipelined behind a slow one on
    the same connection is answered after it."""
    argv = [*example_backend_argv(), "--slow-delay", "0.5"]
    with ExampleBackend.from_process(start_process(argv)) as backend:
        assert pipeline_two(backend) == ["ack:slow", "ack:f"]


@pytest.mark.integration
def test_concurrent_flag_answers_in_completion_order() -> None:
    """With --concurrent (TTwisted's own behaviour) the fast call overtakes the slow one."""
    argv = [*example_backend_argv(), "--slow-delay", "0.5", "--concurrent"]
    with ExampleBackend.from_process(start_process(argv)) as backend:
        assert pipeline_two(backend) == ["ack:f", "ack:slow"]


@pytest.mark.integration
def test_buffered_backend_answers_in_order_too() -> None:
    """The unframed server keeps a connection's calls in order by default as well."""
    argv = [*example_backend_argv(transport="buffered"), "--slow-delay", "0.5"]
    factory = TBinaryProtocolFactory()
    with ExampleBackend.from_process(start_process(argv)) as backend:
        calls = [encode_call(factory, ALERT, i + 1, message=m) for i, m in enumerate(["slow", "f"])]
        with socket.create_connection((backend.host, backend.port), timeout=10) as sock:
            sock.sendall(b"".join(calls))
            reader = MessageReader(TransportKind.BUFFERED, ProtocolKind.BINARY)
            replies: list[bytes] = []
            while len(replies) < 2:
                replies += reader.feed(sock.recv(65536))
        assert [decode_reply(factory, r, ALERT)[1] for r in replies] == ["ack:slow", "ack:f"]
