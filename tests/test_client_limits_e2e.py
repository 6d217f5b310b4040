"""Connection limits and oversized messages, end to end: real gateway and backend processes,
raw sockets and stock-thrift clients (issue 8, items 7 and 9)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift_messages import decode, message

from clients.sync_client import ExampleClient
from gateway.errors import INTERNAL_ERROR, PROTOCOL_ERROR
from gateway.processes import GatewayProcess, metric, start_example_backend, start_gateway
from gateway.thrift import ProtocolKind, frame

pytestmark = pytest.mark.integration

BINARY = ProtocolKind.BINARY
SMALL_BUFFER = 64 * 1024


def alert_call(seqid: int, text: bytes) -> bytes:
    """A framed strict-binary alertSupervisor call, encoded by the thrift library."""
    return frame(message(BINARY, "alertSupervisor", [(1, TType.STRING, text)], seqid=seqid))


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


class Flooder:
    """A client that pipelines distinct 8 KiB calls on a non-blocking socket, never reading."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Small buffers on the client side (set before connecting, so the kernel does not
        # grow them) make its writes block after little data once the gateway stops reading.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        self.sock.connect((gw.host, gw.port))
        self.sock.setblocking(False)
        self.written = 0  # whole calls handed to the kernel
        self.sent_bytes = 0
        self._pending = b""

    def fill(self, max_calls: int = 5000) -> bool:
        """Write until the socket would block (True) or ``max_calls`` were written (False)."""
        while True:
            if not self._pending:
                if self.written >= max_calls:
                    return False
                seqid = self.written + 1
                self._pending = alert_call(seqid, b"%d-" % seqid + b"x" * 8192)
            try:
                sent = self.sock.send(self._pending)
            except BlockingIOError:
                return True
            self.sent_bytes += sent
            self._pending = self._pending[sent:]
            if not self._pending:
                self.written += 1

    def writable(self) -> bool:
        return bool(select.select([], [self.sock], [], 0)[1])

    def blocked_for(self, seconds: float) -> bool:
        """Fill the socket, wait, and tell whether not one more byte could be written."""
        self.fill()
        mark = self.sent_bytes
        time.sleep(seconds)
        self.fill()
        return self.sent_bytes == mark and not self.writable()

    def close(self) -> None:
        self.sock.close()


def _tcp_wmem_max() -> int:
    """The most a TCP send buffer may grow to on this machine (net.ipv4.tcp_wmem's third)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024  # Linux's default


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return path


def test_client_that_never_reads_its_replies_stops_being_read(tmp_path: Path) -> None:
    """A client pipelining calls without reading replies is no longer read once over
    max_unsent_bytes of replies wait for it: its writes block (EAGAIN), the gateway's call
    count stops growing, and the pause shows in /metrics."""
    config = _config(tmp_path, "[gateway]\nmax_unsent_bytes = 65536\nmax_pipelined = 16\n")
    with (
        start_example_backend() as backend,
        start_gateway(backend=backend.address, config=config, admin=True, node_id="unread") as gw,
    ):
        flooder = Flooder(gw)
        try:

            def paused_for_unsent_replies() -> bool:
                flooder.fill()  # keep the pressure on until the gateway pauses
                unsent = metric(gw.admin_url, "gateway_reads_paused_total", reason="unsent")
                paused = metric(gw.admin_url, "gateway_clients_paused")
                return (unsent or 0) >= 1 and paused == 1

            wait_for(paused_for_unsent_replies, 30, "the gateway paused reading this client")
            # The kernel's socket buffers on both ends still grow for a while (autotuning)
            # and absorb some more calls; then the client's writes block for good.
            wait_for(lambda: flooder.blocked_for(0.3), 30, "the client's writes stay blocked")
            # What the gateway read is bounded by where its replies can be: the client's
            # receive buffer, the gateway's kernel send buffer (at most tcp_wmem's maximum),
            # max_unsent_bytes, and the calls underway or held (max_pipelined + one read).
            reply_size = len(alert_call(1, b"ack:1-" + b"x" * 8192))
            room = _tcp_wmem_max() + 4 * SMALL_BUFFER + 65536 + 16 * reply_size
            bound = room // reply_size + 16 + 8
            calls = metric(gw.admin_url, "gateway_calls_total")
            assert calls is not None and calls <= bound
            in_flight = metric(gw.admin_url, "gateway_in_flight")
            assert in_flight is not None and in_flight <= 16
        finally:
            flooder.close()
        assert any("not reading its replies" in line for line in gw.process.stderr_lines)


def test_slow_backend_keeps_a_pipelining_client_within_max_pipelined(tmp_path: Path) -> None:
    """With max_pipelined = 4 and a slow backend, a client pipelining hundreds of calls has at
    most 4 underway at any time, and its writes block instead of queueing in the gateway."""
    config = _config(tmp_path, "[gateway]\nmax_pipelined = 4\n")
    with (
        start_example_backend(delay=1.0) as backend,
        start_gateway(backend=backend.address, config=config, admin=True, node_id="pipe") as gw,
    ):
        flooder = Flooder(gw)
        try:
            assert flooder.fill(), "writes should block: the gateway stopped reading"
            samples = []
            for _ in range(15):
                samples.append(metric(gw.admin_url, "gateway_in_flight"))
                time.sleep(0.1)
            assert all(s is not None and s <= 4 for s in samples) and 4 in samples
            pipelined = metric(gw.admin_url, "gateway_reads_paused_total", reason="pipelined")
            assert pipelined is not None and pipelined >= 1
            calls = metric(gw.admin_url, "gateway_calls_total")
            assert calls is not None and calls < flooder.written
        finally:
            flooder.close()


def _call_over(sock: socket.socket, seqid: int, text: bytes) -> bytes:
    """Send one alertSupervisor call on a blocking socket; return its reply's string."""
    sock.sendall(alert_call(seqid, text))
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        data += chunk
    _, mtype, got, body = decode(BINARY, data[4:])
    assert mtype == TMessageType.REPLY and got == seqid
    reply: bytes = body[0][2][1]
    return reply


def test_connections_beyond_max_connections_are_closed_at_once(tmp_path: Path) -> None:
    """With max_connections = 2 a third client is closed at once (counted, logged), and once
    a client leaves a new one is served again."""
    config = _config(tmp_path, "[gateway]\nmax_connections = 2\n")
    with (
        start_example_backend() as backend,
        start_gateway(backend=backend.address, config=config, admin=True, node_id="cap") as gw,
    ):
        first = socket.create_connection((gw.host, gw.port), timeout=5)
        second = socket.create_connection((gw.host, gw.port), timeout=5)
        try:
            assert _call_over(first, 1, b"one") == b"ack:one"
            assert _call_over(second, 1, b"two") == b"ack:two"
            # Closed at once: EOF, or a reset (the kernel may send one): both are a refusal.
            with (
                socket.create_connection((gw.host, gw.port), timeout=5) as third,
                contextlib.suppress(ConnectionResetError),
            ):
                assert third.recv(1) == b""
            assert metric(gw.admin_url, "gateway_connections_refused_total") == 1
            first.close()
            wait_for(
                lambda: metric(gw.admin_url, "gateway_client_connections") == 1,
                5,
                "the gateway saw the first client leave",
            )
            with socket.create_connection((gw.host, gw.port), timeout=5) as fourth:
                assert _call_over(fourth, 1, b"four") == b"ack:four"
        finally:
            first.close()
            second.close()
        assert any("max_connections (2) reached" in line for line in gw.process.stderr_lines)


def test_idle_connection_is_closed_after_idle_timeout(tmp_path: Path) -> None:
    """With idle_timeout = 0.4 a silent client is closed within about half a second, while a
    client calling every 0.1 s stays connected."""
    config = _config(tmp_path, "[gateway]\nidle_timeout = 0.4\n")
    with (
        start_example_backend() as backend,
        start_gateway(backend=backend.address, config=config, admin=True, node_id="idle") as gw,
    ):
        with (
            socket.create_connection((gw.host, gw.port), timeout=5) as idle,
            socket.create_connection((gw.host, gw.port), timeout=5) as chatty,
        ):
            started = time.monotonic()
            closed_at: list[float] = []

            def watch_idle() -> None:
                if idle.recv(1) == b"":
                    closed_at.append(time.monotonic() - started)

            watcher = threading.Thread(target=watch_idle)
            watcher.start()
            for i in range(12):
                assert _call_over(chatty, i + 1, b"ping-%d" % i) == b"ack:ping-%d" % i
                time.sleep(0.1)
            watcher.join(timeout=5)
            assert closed_at and 0.4 <= closed_at[0] < 1.0
        idle_closed = metric(gw.admin_url, "gateway_idle_closed_total")
        assert idle_closed is not None and idle_closed >= 1


# -- oversized messages (item 7) -----------------------------------------------------------


@pytest.fixture(scope="module")
def tight_frames(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, int]]:
    """A gateway whose max_frame_size lets a 4000-character alert through but not its reply
    ("ack:" + the text), in front of a slow backend on ONE pipelined upstream connection."""
    text = b"x" * 4000
    call_size = len(message(BINARY, "alertSupervisor", [(1, TType.STRING, text)]))
    reply_size = len(
        message(
            BINARY,
            "alertSupervisor",
            [(0, TType.STRING, b"ack:" + text)],
            mtype=TMessageType.REPLY,
        )
    )
    limit = call_size + 1
    assert reply_size > limit
    config = tmp_path_factory.mktemp("tight") / "gw.toml"
    config.write_text(f"[gateway]\nmax_frame_size = {limit}\n[backends.default]\nconnections = 1\n")
    with (
        start_example_backend(delay=0.5) as backend,
        start_gateway(backend=backend.address, config=config, node_id="tight") as gw,
    ):
        yield gw, limit


def test_oversized_reply_fails_only_its_own_call(tight_frames: tuple[GatewayProcess, int]) -> None:
    """A backend reply over max_frame_size fails that one call (INTERNAL_ERROR naming the
    limit); a call pipelined behind it on the same upstream connection gets its reply."""
    gw, limit = tight_frames
    results: dict[str, object] = {}

    def call(name: str, text: str) -> None:
        try:
            with ExampleClient(gw.host, gw.port, timeout=10) as client:
                results[name] = client.alert(text)
        except TApplicationException as exc:
            results[name] = exc

    big = threading.Thread(target=call, args=("big", "x" * 4000))
    big.start()
    time.sleep(0.1)  # the big reply comes back first, ahead of the small one
    small = threading.Thread(target=call, args=("small", "small"))
    small.start()
    big.join(timeout=10)
    small.join(timeout=10)
    assert results["small"] == "ack:small"
    error = results["big"]
    assert isinstance(error, TApplicationException) and error.type == INTERNAL_ERROR
    assert f"exceeds max_frame_size {limit}" in str(error.message)


def test_oversized_call_is_answered_and_the_connection_kept(
    tight_frames: tuple[GatewayProcess, int],
) -> None:
    """A framed call over max_frame_size gets PROTOCOL_ERROR, and the same stock-thrift
    connection then makes a normal call."""
    gw, limit = tight_frames
    with ExampleClient(gw.host, gw.port, timeout=10) as client:
        with pytest.raises(TApplicationException) as info:
            client.alert("y" * 5000)
        assert info.value.type == PROTOCOL_ERROR
        assert f"exceeds max_frame_size {limit}" in str(info.value.message)
        assert client.alert("after") == "ack:after"
