"""The benchmark's load generator and cheap backend: right answers counted, wrong ones caught.

The generator encodes with the stock thrift library; these tests hold it against the Twisted
example backend (thrift's own processors), against a stock thrift client talking to the cheap
backend, and against a server that answers each call with another call's reply.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.Thrift import TApplicationException, TMessageType
from thrift.transport.TTransport import TMemoryBuffer

from benchmarks.rawload import LoadSpec, percentiles, run_load
from benchmarks.responder import answer
from benchmarks.targets import Responder
from benchmarks.wire import CODECS, build_callset, expected_result
from clients.calls import ALERT, encode_call, protocol_factory
from clients.sync_client import ExampleClient
from gateway.processes import ExampleBackend, example_backend_argv, start_process

SHORT = {"seconds": 0.25, "warmup": 0.05, "drain_timeout": 5.0}


def test_compact_seqids_keep_their_width() -> None:
    """Compact seqids are 3-byte varints over the whole range used, and decode to themselves."""
    codec = CODECS["compact"]
    for seqid in (codec.low, codec.low + 1, 123_456, codec.high):
        wire = codec.encode(seqid)
        assert len(wire) == 3 and codec.decode(wire, 0) == seqid


def test_callset_matches_stock_thrift_encoding() -> None:
    """A pre-encoded call with its seqid patched is byte for byte what thrift writes."""
    callset = build_callset("alertSupervisor", "compact", "framed", ["k-1", "k-2"])
    call = bytearray(callset.calls[1])
    at = callset.call_seqid_at
    call[at : at + 3] = CODECS["compact"].encode(50_000)
    message = encode_call(protocol_factory("compact"), ALERT, 50_000, message="k-2")
    assert bytes(call) == len(message).to_bytes(4, "big") + message


def test_percentiles_use_nearest_rank() -> None:
    """p50 of 1..1000 ms is 500 ms, p99.9 is 999 ms, max 1000 ms."""
    summary = percentiles([i * 1_000_000 for i in range(1000, 0, -1)])
    assert (summary["p50"], summary["p99.9"], summary["max"], summary["n"]) == (
        500.0,
        999.0,
        1000.0,
        1000,
    )


@pytest.fixture(scope="module")
def example_backends() -> Iterator[dict[str, ExampleBackend]]:
    """Supervisor in binary/framed and Poetry in compact/buffered, started side by side."""
    argvs = {
        "supervisor": example_backend_argv("supervisor"),
        "poetry": example_backend_argv("poetry", protocol="compact", transport="buffered"),
    }
    processes = {name: start_process(argv) for name, argv in argvs.items()}
    try:
        yield {name: ExampleBackend.from_process(p) for name, p in processes.items()}
    finally:
        for process in processes.values():
            process.stop()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("service", "method", "protocol", "transport", "depth"),
    [
        ("supervisor", "alertSupervisor", "binary", "framed", 1),
        ("poetry", "getPoem", "compact", "buffered", 4),
    ],
)
def test_generator_against_the_example_backend(
    example_backends: dict[str, ExampleBackend],
    service: str,
    method: str,
    protocol: str,
    transport: str,
    depth: int,
) -> None:
    """Every call the example backend answers is counted correct; none is lost or wrong."""
    backend = example_backends[service]
    spec = LoadSpec(
        connections=4, depth=depth, method=method, protocol=protocol, transport=transport, **SHORT
    )
    result = run_load(backend.host, backend.port, spec)
    assert result.errors == 0, result.wrong_samples
    assert result.all_ok >= result.ok > 20
    assert result.latency_ms["n"] == result.ok
    with ExampleClient(backend.host, backend.port, protocol=protocol, transport=transport) as c:
        assert c.backend_stats(service)[method] == result.all_ok


@pytest.fixture(scope="module")
def responder() -> Iterator[Responder]:
    process = start_process(
        [sys.executable, "-m", "benchmarks.responder", "--listen", "127.0.0.1:0"]
    )
    try:
        yield Responder.from_process(process)
    finally:
        process.stop()


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_responder_answers_a_stock_thrift_client(responder: Responder, protocol: str) -> None:
    """The cheap backend gives the example backend's answers; unknown methods get
    TApplicationException(UNKNOWN_METHOD) and the connection stays usable."""
    with ExampleClient(responder.host, responder.port, protocol=protocol) as client:
        for _ in range(2):  # the second time from its reply cache
            assert client.alert("disk full") == "ack:disk full"
            assert client.get_poem("Ode") == expected_result("getPoem", "Ode")
        with pytest.raises(TApplicationException) as caught:
            client.backend_stats()
        assert caught.value.type == TApplicationException.UNKNOWN_METHOD
        assert client.alert("again") == "ack:again"


@pytest.mark.integration
def test_open_loop_keeps_its_rate(responder: Responder) -> None:
    """At a fixed rate the generator sends about rate x window calls, all answered."""
    spec = LoadSpec(connections=8, depth=4, rate=400.0, **SHORT)
    result = run_load(responder.host, responder.port, spec)
    assert result.errors == 0, result.wrong_samples
    assert 80 <= result.ok <= 120  # 400/s over 0.25 s


SEQID_END = 8 + len("alertSupervisor") + 4  # binary reply: version, name, seqid


def _crossing_server(listener: socket.socket, mode: str) -> None:
    """Answers calls two at a time: "swap" gives each the other's result (seqids kept),
    "seqid" answers each correctly but under a seqid no call has."""
    conn, _ = listener.accept()
    calls: list[bytes] = []
    buf = b""
    with conn:
        while data := conn.recv(65536):
            buf += data
            while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                size = int.from_bytes(buf[:4], "big")
                calls.append(buf[4 : 4 + size])
                buf = buf[4 + size :]
            while len(calls) >= 2:
                one, two = (answer("binary", calls.pop(0)) or b"" for _ in range(2))
                if mode == "swap":
                    one, two = one[:SEQID_END] + two[SEQID_END:], two[:SEQID_END] + one[SEQID_END:]
                elif mode == "error":
                    one, two = _error_reply(one), _error_reply(two)
                else:
                    one, two = _bump_seqid(one), _bump_seqid(two)
                conn.sendall(b"".join(len(r).to_bytes(4, "big") + r for r in (one, two)))


def _error_reply(reply: bytes) -> bytes:
    """The same reply header (name, seqid) as an EXCEPTION carrying a TApplicationException."""
    buf = TMemoryBuffer()
    TApplicationException(TApplicationException.INTERNAL_ERROR, "boom").write(TBinaryProtocol(buf))
    return reply[:3] + bytes((TMessageType.EXCEPTION,)) + reply[4:SEQID_END] + buf.getvalue()


def _bump_seqid(reply: bytes) -> bytes:
    """+1000: the same slot (seqid % 2), but not the seqid it is waiting for."""
    at = SEQID_END - 4
    seqid = int.from_bytes(reply[at:SEQID_END], "big") + 1000
    return reply[:at] + seqid.to_bytes(4, "big") + reply[SEQID_END:]


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["swap", "seqid", "error"])
def test_generator_catches_crossed_replies(mode: str) -> None:
    """A reply carrying another call's answer counts as wrong, one with a seqid no call has
    counts as unmatched, an error answer as wrong and failed: none of them is correct."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = threading.Thread(target=_crossing_server, args=(listener, mode), daemon=True)
    server.start()
    try:
        spec = LoadSpec(connections=1, depth=2, seconds=0.1, warmup=0.0, drain_timeout=0.5)
        result = run_load("127.0.0.1", listener.getsockname()[1], spec)
    finally:
        listener.close()
        server.join(timeout=5)
    assert result.all_ok == 0
    if mode == "swap":
        assert result.all_wrong > 2 and result.unmatched == 0 and result.all_failed == 0
    elif mode == "error":
        assert result.all_wrong > 2 and result.all_failed == result.all_wrong
        assert result.unmatched == 0
    else:
        assert result.unmatched == 2 and result.lost == 2  # then nothing more is sent


def _out_of_step_server(listener: socket.socket) -> None:
    """Buffered: takes two equal-sized calls, answers the first correctly and the second
    with as many junk bytes, in one write."""
    conn, _ = listener.accept()
    buf = b""
    with conn:
        while len(buf) < 2 or len(buf) % 2:  # both calls, sent back to back
            buf += conn.recv(65536)
        first = buf[: len(buf) // 2]
        reply = answer("binary", first) or b""
        conn.sendall(reply + b"\x00" * len(reply))
        conn.recv(1)  # until the generator drops the connection


@pytest.mark.integration
def test_buffered_reply_out_of_step_is_wrong_and_the_answer_before_it_counts() -> None:
    """In one read, a correct buffered reply followed by bytes that are not a reply: the
    first call counts correct, the second wrong, none is lost, and the run does not wait
    out its drain timeout for calls already answered."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = threading.Thread(target=_out_of_step_server, args=(listener,), daemon=True)
    server.start()
    try:
        spec = LoadSpec(
            connections=1, depth=2, transport="buffered", seconds=0.1, warmup=0.0,
            drain_timeout=3.0, hot=True,
        )  # fmt: skip
        started = time.monotonic()
        result = run_load("127.0.0.1", listener.getsockname()[1], spec)
        elapsed = time.monotonic() - started
    finally:
        listener.close()
        server.join(timeout=5)
    assert (result.all_ok, result.all_wrong, result.lost) == (1, 1, 0)
    assert elapsed < 2.0
