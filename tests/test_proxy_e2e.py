"""The single-node gateway end to end: real backend and gateway processes, real Thrift clients."""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift_messages import decode, message

from gateway.examples.gen.supervisor.ttypes import SupervisorBusy
from gateway.processes import (
    ExampleBackend,
    GatewayProcess,
    backend_count,
    call_once,
    concurrently,
    gateway_cli,
    metric,
    run_herd,
    start_example_backend,
    start_gateway,
    start_process,
)
from gateway.thrift import ProtocolKind, frame

pytestmark = pytest.mark.integration

T = TypeVar("T")
HOST = "127.0.0.1"


def alert(gw: GatewayProcess, text: str, **kw: Any) -> str:
    return call_once(gw, lambda c: c.alert(text), **kw)


def app_error(fn: Callable[[], object]) -> TApplicationException:
    with pytest.raises(TApplicationException) as info:
        fn()
    return info.value


def herd(gw: GatewayProcess, *args: str) -> dict[str, Any]:
    return run_herd([gw.address], *args)


@pytest.fixture(scope="module")
def slow_backend() -> Iterator[ExampleBackend]:
    with start_example_backend(delay=1.0) as backend:
        yield backend


@pytest.fixture(scope="module")
def gateway(slow_backend: ExampleBackend) -> Iterator[GatewayProcess]:
    with start_gateway(backend=slow_backend.address, node_id="e2e") as gw:
        yield gw


def test_200_identical_calls_reach_the_backend_once(
    gateway: GatewayProcess, slow_backend: ExampleBackend
) -> None:
    """200 concurrent identical alertSupervisor calls cost one backend call; all get ack."""
    before = backend_count(slow_backend)
    result = herd(gateway, "--clients", "200", "--keys", "1", "--rounds", "1")
    assert result["ok"] == 200 and result["wrong_replies"] == 0
    assert backend_count(slow_backend) - before == 1


def test_50_distinct_messages_make_50_backend_calls(
    gateway: GatewayProcess, slow_backend: ExampleBackend
) -> None:
    """Distinct messages are never joined: 50 messages, 50 backend calls, each its own reply."""
    before = backend_count(slow_backend)
    result = herd(gateway, "--clients", "50", "--keys", "50", "--rounds", "1")
    assert result["ok"] == 50 and result["wrong_replies"] == 0
    assert backend_count(slow_backend) - before == 50


def test_binary_compact_and_multiplexed_clients_coalesce(
    gateway: GatewayProcess, slow_backend: ExampleBackend
) -> None:
    """Clients of every protocol and transport calling together share one backend call."""
    kinds: list[dict[str, Any]] = [
        {"protocol": p, "transport": t, "multiplexed": m}
        for p in ("binary", "compact", "binary-nonstrict")
        for t in ("framed", "buffered")
        for m in (False, True)
        if not (m and p == "binary-nonstrict")
    ]
    before = backend_count(slow_backend)
    replies = concurrently(len(kinds), lambda i: alert(gateway, "mixed-herd", **kinds[i]))
    assert replies == ["ack:mixed-herd"] * len(kinds)
    assert backend_count(slow_backend) - before == 1


def test_randomized_clients_never_get_another_clients_reply(gateway: GatewayProcess) -> None:
    """50 clients with random messages, protocols and disconnects: every reply is its own."""
    rng = random.Random(1234)
    plans = [
        (
            f"rand-{rng.randrange(8)}",
            rng.choice(["binary", "compact", "binary-nonstrict"]),
            rng.choice(["framed", "buffered"]),
            rng.random() < 0.2,  # hang up mid-call
            rng.uniform(0, 0.5),
        )
        for _ in range(50)
    ]
    assert any(hang_up for *_rest, hang_up, _pause in plans)  # the seed does exercise hang-ups

    def run(i: int) -> str | None:
        text, protocol, transport, hang_up, pause = plans[i]
        time.sleep(pause)
        if hang_up:
            # A whole call, then gone while the backend (1 s) still works on it: this waiter
            # is dropped, possibly from a call other clients have joined.
            with socket.create_connection((gateway.host, gateway.port)) as sock:
                sock.sendall(_framed_alert(text.encode(), seqid=i))
                time.sleep(0.2)
            return None
        return alert(gateway, text, protocol=protocol, transport=transport)

    results = concurrently(len(plans), run)
    for (text, _protocol, _transport, hang_up, _pause), reply in zip(plans, results, strict=True):
        assert reply == (None if hang_up else f"ack:{text}")
    assert alert(gateway, "still-alive") == "ack:still-alive"


def test_declared_exception_reaches_every_waiter(
    gateway: GatewayProcess, slow_backend: ExampleBackend
) -> None:
    """A declared SupervisorBusy is shared by all joined callers, each decoding it."""
    before = backend_count(slow_backend)

    def call(_: int) -> str:
        try:
            alert(gateway, "busy:boiler")
        except SupervisorBusy as exc:
            return str(exc.reason)
        return "no exception"

    assert concurrently(5, call) == ["busy:boiler"] * 5
    assert backend_count(slow_backend) - before == 1


def test_failures_reach_every_waiter_and_are_not_remembered(
    gateway: GatewayProcess, slow_backend: ExampleBackend
) -> None:
    """An undeclared backend error reaches all joined callers; the next call tries again."""
    before = backend_count(slow_backend)

    def call(_: int) -> int:
        return int(app_error(lambda: alert(gateway, "crash:now")).type)

    assert concurrently(4, call) == [TApplicationException.INTERNAL_ERROR] * 4
    assert backend_count(slow_backend) - before == 1
    app_error(lambda: alert(gateway, "crash:now"))
    assert backend_count(slow_backend) - before == 2


def test_client_disconnect_drops_only_its_own_waiter(
    gateway: GatewayProcess, slow_backend: ExampleBackend
) -> None:
    """A caller that hangs up mid-call leaves the shared call running for the others."""
    before = backend_count(slow_backend)
    replies: list[str] = []
    with socket.create_connection((gateway.host, gateway.port)) as sock:
        sock.sendall(_framed_alert(b"leave-early"))
        time.sleep(0.2)  # the call is in flight and this client is its first waiter
        stayer = threading.Thread(target=lambda: replies.append(alert(gateway, "leave-early")))
        stayer.start()
        time.sleep(0.2)  # the second caller has joined
    stayer.join(timeout=10)  # the first caller hung up when its socket closed above
    assert replies == ["ack:leave-early"]
    assert backend_count(slow_backend) - before == 1


def _framed_alert(text: bytes, seqid: int = 1) -> bytes:
    """A framed strict-binary alertSupervisor call, encoded by the thrift library."""
    return frame(
        message(ProtocolKind.BINARY, "alertSupervisor", [(1, TType.STRING, text)], seqid=seqid)
    )


# -- errors the gateway makes -------------------------------------------------------------------


def test_backend_down_fails_fast_with_internal_error() -> None:
    """With nothing listening at the backend address, calls fail at once with INTERNAL_ERROR."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        dead = f"{HOST}:{sock.getsockname()[1]}"  # bound, never listening: connection refused
        with start_gateway(backend=dead, node_id="dead") as gw:
            started = time.monotonic()
            exc = app_error(lambda: alert(gw, "anyone?"))
            elapsed = time.monotonic() - started
    assert exc.type == TApplicationException.INTERNAL_ERROR and "unreachable" in str(exc.message)
    assert elapsed < 5  # "fast": well before any per-call timeout (30 s default)


def test_timeout_and_overload_have_distinct_messages(tmp_path: Path) -> None:
    """A slow backend times out per method, and a full dispatch queue answers 'overloaded'."""
    config = tmp_path / "gw.toml"
    config.write_text(
        "[backends.default]\nmax_concurrency = 1\nqueue_size = 1\n"
        "[methods.alertSupervisor]\ntimeout = 0.5\n"
    )
    with (
        start_example_backend(delay=3.0) as backend,
        start_gateway(backend=backend.address, config=config, node_id="tight") as gw,
    ):
        errors = concurrently(4, lambda i: str(app_error(lambda: alert(gw, f"slow-{i}")).message))
    assert any("timeout after 0.5s" in e for e in errors)
    assert any("overloaded" in e for e in errors)


def _send_raw(gw: GatewayProcess, data: bytes, read: bool = True) -> bytes:
    with socket.create_connection((gw.host, gw.port), timeout=5) as sock:
        sock.sendall(data)
        if not read:
            return b""
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_oversized_frame_is_answered_from_its_header_alone(gateway: GatewayProcess) -> None:
    """A 100 MiB frame (over max_frame_size) is answered PROTOCOL_ERROR for its seqid as soon
    as its header arrived, without the gateway waiting for (or buffering) the rest."""
    call = _framed_alert(b"x", seqid=77)[4:]
    with socket.create_connection((gateway.host, gateway.port), timeout=5) as sock:
        sock.sendall(struct.pack(">I", 100 * 1024 * 1024) + call)
        reply = sock.recv(65536)
    name, mtype, seqid, body = decode(ProtocolKind.BINARY, reply[4:])
    assert (name, mtype, seqid) == ("alertSupervisor", TMessageType.EXCEPTION, 77)
    text = b"gateway: call of 104857600 bytes exceeds max_frame_size 16777216"
    assert body == [(1, TType.STRING, (TType.STRING, text)), (2, TType.I32, (TType.I32, 7))]
    assert alert(gateway, "after-oversize") == "ack:after-oversize"


def test_oversized_frame_without_a_header_closes_only_that_connection(
    gateway: GatewayProcess,
) -> None:
    """A frame over max_frame_size whose first bytes are no message header is refused by
    closing that connection; others carry on."""
    bad_header = b"\x80\x01\x00\x01\xff\xff\xff\xff"  # negative name length
    assert _send_raw(gateway, struct.pack(">I", 100 * 1024 * 1024) + bad_header) == b""
    assert alert(gateway, "after-oversize") == "ack:after-oversize"


def test_garbage_closes_only_that_connection(gateway: GatewayProcess) -> None:
    """Bytes that are neither Thrift nor HTTP (an SSH banner) get a clean close, and one log
    line."""
    assert _send_raw(gateway, b"SSH-2.0-OpenSSH_9.2p1\r\n") == b""
    assert alert(gateway, "after-garbage") == "ack:after-garbage"
    assert any("not a Thrift stream" in line for line in gateway.process.stderr_lines)


def test_truncated_frame_then_hangup_is_harmless(gateway: GatewayProcess) -> None:
    """A client that sends half a frame and disconnects does not disturb the gateway."""
    _send_raw(gateway, _framed_alert(b"cut")[:12], read=False)
    assert alert(gateway, "after-truncation") == "ack:after-truncation"


def test_malformed_body_gets_protocol_error(gateway: GatewayProcess) -> None:
    """A framed call whose header is fine but whose args are garbage gets PROTOCOL_ERROR."""
    frame = _framed_alert(b"x", seqid=42)
    broken = frame[:-7] + b"\x0b\x00\x01\x7f\xff\xff\xf0"  # string length ~2 GiB
    broken = struct.pack(">I", len(broken) - 4) + broken[4:]
    with socket.create_connection((gateway.host, gateway.port), timeout=5) as sock:
        sock.sendall(broken)
        reply = sock.recv(65536)
    assert reply[4:8] == b"\x80\x01\x00\x03"  # strict binary, EXCEPTION
    assert (
        struct.unpack(">i", reply[12 + len("alertSupervisor") : 16 + len("alertSupervisor")])[0]
        == 42
    )
    assert b"malformed" in reply


def test_stock_buffered_transport_client_works_end_to_end(gateway: GatewayProcess) -> None:
    """The stock TBufferedTransport + TSocket client (binary and compact) gets its reply."""
    for protocol in ("binary", "compact"):
        assert alert(gateway, f"buf-{protocol}", protocol=protocol, transport="buffered") == (
            f"ack:buf-{protocol}"
        )


# -- cache mode --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def poetry() -> Iterator[tuple[ExampleBackend, GatewayProcess]]:
    config = Path(__file__).parent / "data" / "poetry-cache.toml"
    with (
        start_example_backend("poetry", delay=0.3) as backend,
        start_gateway(backend=backend.address, config=config, node_id="poet", admin=True) as gw,
    ):
        yield backend, gw


def poem(gw: GatewayProcess, title: str) -> str:
    return call_once(gw, lambda c: c.get_poem(title))


def test_cache_serves_within_ttl(poetry: tuple[ExampleBackend, GatewayProcess]) -> None:
    """Within ttl a cached getPoem is served without another backend call."""
    backend, gw = poetry
    before = backend_count(backend, "getPoem")
    texts = concurrently(10, lambda _: poem(gw, "ttl-poem"))
    texts += [poem(gw, "ttl-poem") for _ in range(3)]
    assert all("ttl-poem" in t for t in texts) and len(set(texts)) == 1
    assert backend_count(backend, "getPoem") - before == 1


def test_stale_reply_served_while_one_refresh_runs(
    poetry: tuple[ExampleBackend, GatewayProcess],
) -> None:
    """Past ttl, within stale_ttl, callers are answered from the stale entry; one refresh runs."""
    backend, gw = poetry
    poem(gw, "stale-poem")
    before = backend_count(backend, "getPoem")
    stale_before = stale_served(gw)
    time.sleep(1.2)  # ttl = 1 s in tests/data/poetry-cache.toml; the backend takes 0.3 s
    texts = [poem(gw, "stale-poem") for _ in range(3)]  # all inside the refresh's 0.3 s
    assert all("stale-poem" in t for t in texts)
    assert stale_served(gw) - stale_before == 3
    time.sleep(0.6)
    assert backend_count(backend, "getPoem") - before == 1


def stale_served(gw: GatewayProcess) -> float:
    """Calls this node answered from a stale entry, from its /metrics."""
    count = "gateway_call_latency_seconds_count"
    return metric(gw.admin_url, count, method="getPoem", source="stale") or 0.0


def test_declared_exceptions_are_not_cached_by_default(
    poetry: tuple[ExampleBackend, GatewayProcess],
) -> None:
    """PoemNotFound is returned to the caller but each new call asks the backend again."""
    backend, gw = poetry
    before = backend_count(backend, "getPoem")
    for _ in range(2):
        with pytest.raises(Exception, match="missing"):
            poem(gw, "missing:nope")
    assert backend_count(backend, "getPoem") - before == 2


# -- process lifecycle -----------------------------------------------------------------------


def test_sigterm_drains_in_flight_calls_and_exits_zero(slow_backend: ExampleBackend) -> None:
    """SIGTERM stops accepting, answers the calls in flight, exits 0 with a summary line."""
    gw = start_gateway(backend=slow_backend.address, node_id="drainer")
    try:
        results: list[str] = []
        worker = threading.Thread(target=lambda: results.append(alert(gw, "drain-me")))
        worker.start()
        time.sleep(0.3)
        code = gw.stop(timeout=15)
        worker.join(timeout=15)
    finally:
        gw.stop()
    assert code == 0 and results == ["ack:drain-me"]
    assert any("stopped: drained" in line for line in gw.process.stdout_lines)


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """An invalid config prints one clear line and exits 2 before listening."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[methods.getPoem]\nmode = "cache"\n')
    proc = start_process(gateway_cli("serve", "--config", str(bad), "--listen", f"{HOST}:0",
                                     "--backend", f"{HOST}:1"))  # fmt: skip
    code = proc.proc.wait(timeout=20)
    proc.stop()
    assert code == 2
    assert proc.stderr_lines == [
        "gateway: config error: methods.getPoem: mode = 'cache' needs ttl > 0"
    ]


def test_port_taken_is_one_line_and_exit_1() -> None:
    """A listen port already in use prints one line and exits 1."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = start_process(
            gateway_cli("serve", "--listen", f"{HOST}:{port}", "--backend", f"{HOST}:1")
        )
        code = proc.proc.wait(timeout=20)
        proc.stop()
    assert code == 1
    assert len(proc.stderr_lines) == 1 and "cannot listen" in proc.stderr_lines[0]


def test_json_log_format_writes_one_object_per_line(slow_backend: ExampleBackend) -> None:
    """--log-format json makes every stderr log line a JSON object with level and message."""
    with start_gateway("--log-format", "json", backend=slow_backend.address, node_id="js") as gw:
        assert alert(gw, "json-logs") == "ack:json-logs"
        _send_raw(gw, b"SSH-2.0-OpenSSH_9.2p1\r\n")  # provokes a warning line
        deadline = time.monotonic() + 5
        while not any("not a Thrift" in line for line in gw.process.stderr_lines):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    entries = [json.loads(line) for line in gw.process.stderr_lines if line.strip()]
    assert entries and all({"ts", "level", "logger", "msg"} <= set(e) for e in entries)
    assert any(e["level"] == "warning" and "not a Thrift" in e["msg"] for e in entries)
