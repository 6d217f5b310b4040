"""Partial messages are bounded in time (body_timeout) and node-wide bytes (max_partial_bytes)
(issue 16 defect 4); in memory, over StringTransports."""

from __future__ import annotations

import pytest
from test_server import Setup, alert

from gateway.proxy.connections import ClientLimits
from gateway.thrift import ProtocolKind, TransportKind, frame

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")

BINARY = ProtocolKind.BINARY


def _partial(size: int) -> bytes:
    """The first bytes of a framed call announcing ``size`` bytes, all but its last byte."""
    call = frame(alert(BINARY, 1, b"x" * (size - 40)))
    return call[:-1]


def test_message_not_whole_after_body_timeout_closes_the_connection() -> None:
    """A frame whose first bytes came 10 s ago and is not whole is dropped and its connection
    closed (once the sweep reaches it); a connection between messages is not."""
    s = Setup(client_limits=ClientLimits(body_timeout=10))
    _, quiet_transport = s.connect()
    s.conn.dataReceived(_partial(100_000))
    assert s.stats.partial_bytes == len(_partial(100_000))
    s.clock.advance(9.9)
    assert not s.transport.disconnecting
    s.clock.advance(1.1)
    assert s.transport.disconnecting and s.stats.partial_closed == 1
    assert s.stats.partial_bytes == 0
    assert not quiet_transport.disconnecting
    assert not s.clock.getDelayedCalls()  # no partial message left: no sweep timer either


def test_trickling_does_not_extend_the_body_deadline() -> None:
    """Bytes arriving one at a time do not push the deadline: it counts from the first."""
    s = Setup(client_limits=ClientLimits(body_timeout=4))
    data = _partial(1000)
    s.conn.dataReceived(data[:10])
    for i in range(10, 16):
        s.clock.advance(0.9)
        s.conn.dataReceived(data[i : i + 1])
    assert s.transport.disconnecting


def test_whole_message_within_body_timeout_is_served() -> None:
    """A frame completed before body_timeout is dispatched and its connection kept."""
    s = Setup(client_limits=ClientLimits(body_timeout=4))
    call = frame(alert(BINARY, 1, b"x" * 5000))
    s.conn.dataReceived(call[:100])
    s.clock.advance(3)
    s.conn.dataReceived(call[100:])
    assert s.stats.partial_bytes == 0
    s.clock.advance(10)
    assert not s.transport.disconnecting and len(s.backend.pending) == 1


def test_over_max_partial_bytes_the_largest_partial_messages_are_closed() -> None:
    """With max_partial_bytes = 250 kB, a third 100 kB partial frame closes the connection
    holding the largest (the oldest among equals) and the node's total fits again."""
    s = Setup(client_limits=ClientLimits(max_partial_bytes=250_000, body_timeout=0))
    conns = [s.connect() for _ in range(3)]
    conns[0][0].dataReceived(_partial(100_000))
    s.clock.advance(1)
    conns[1][0].dataReceived(_partial(120_000))
    s.clock.advance(1)
    assert s.stats.partial_closed == 0
    conns[2][0].dataReceived(_partial(100_000))
    assert [t.disconnecting for _, t in conns] == [False, True, False]
    assert s.stats.partial_closed == 1 and s.stats.partial_bytes == 2 * len(_partial(100_000))


def test_config_keys_and_defaults() -> None:
    """[gateway] body_timeout (default 10 s, 0 = never) and max_partial_bytes (default
    256 MiB) are read and checked like the other connection limits."""
    from gateway.config import ConfigError, build_config

    flags: dict[str, str | None] = {"listen": "127.0.0.1:0", "backend": "127.0.0.1:1"}
    default = build_config({}, flags)
    assert (default.body_timeout, default.max_partial_bytes) == (10.0, 256 << 20)
    cfg = build_config({"gateway": {"body_timeout": 0, "max_partial_bytes": 1000}}, flags)
    assert (cfg.body_timeout, cfg.max_partial_bytes) == (0.0, 1000)
    for raw, text in (
        ({"body_timeout": -1}, "gateway.body_timeout: must be >= 0"),
        ({"max_partial_bytes": 0}, "gateway.max_partial_bytes: must be > 0"),
    ):
        with pytest.raises(ConfigError, match=text):
            build_config({"gateway": raw}, flags)


def test_connection_shed_by_its_own_read_still_answers_the_calls_before() -> None:
    """A read that completes a call and starts a partial message pushing the node over
    max_partial_bytes closes that connection only after the complete call is answered."""
    s = Setup(client_limits=ClientLimits(max_partial_bytes=50_000, body_timeout=0))
    s.conn.dataReceived(frame(alert(BINARY, 1)) + _partial(100_000))
    assert s.stats.partial_closed == 1 and s.stats.partial_bytes == 0
    assert len(s.backend.pending) == 1 and not s.transport.disconnecting
    s.answer_all()
    assert s.replies(TransportKind.FRAMED, BINARY) == [1]
    assert s.transport.disconnecting
