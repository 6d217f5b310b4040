"""detect(): transport and protocol of a connection from its first bytes."""

from __future__ import annotations

import pytest
from thrift.Thrift import TType
from thrift_messages import ALL_PROTOCOLS, message

from gateway.thrift import (
    MAX_DETECT_PREFIX,
    NotThrift,
    ProtocolKind,
    TransportKind,
    detect,
    encode,
)

# THeader carries only binary/compact and needs its own frames: tests/test_thrift_theader.py.
COMBOS = [(t, p) for t in (TransportKind.FRAMED, TransportKind.BUFFERED) for p in ALL_PROTOCOLS]


def _stream(transport: TransportKind, protocol: ProtocolKind) -> bytes:
    return encode(transport, message(protocol, "alertSupervisor", [(1, TType.STRING, b"hello")]))


@pytest.mark.parametrize(("transport", "protocol"), COMBOS)
def test_detects_every_combination(transport: TransportKind, protocol: ProtocolKind) -> None:
    """A whole first message is recognised for all six transport/protocol combinations."""
    assert detect(_stream(transport, protocol)) == (transport, protocol)


@pytest.mark.parametrize(("transport", "protocol"), COMBOS)
def test_prefixes_give_none_until_decided(transport: TransportKind, protocol: ProtocolKind) -> None:
    """Every prefix either needs more bytes (None) or already gives the right answer."""
    stream = _stream(transport, protocol)
    answers = [detect(stream[:n]) for n in range(len(stream) + 1)]
    decided = answers.index((transport, protocol))
    assert answers[:decided] == [None] * decided
    assert answers[decided:] == [(transport, protocol)] * (len(answers) - decided)


def test_empty_prefix_needs_more() -> None:
    """No bytes at all: None."""
    assert detect(b"") is None


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /rpc HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS ClientHello
        b"SSH-2.0-OpenSSH_9.0\r\n",
        b"*1\r\n$4\r\nPING\r\n",  # Redis
        b"\x80\x02\x00\x01",  # strict binary with a bad version
        b"\x82\x22",  # compact with version 2
        b"\x00\x00\x00\x05hel\x01o\x01",  # non-strict name with a control byte
        b"\x00\x00\x00\x02hi\x07\x00\x00\x00\x01",  # non-strict with message type 7
    ],
)
def test_garbage_is_not_thrift(garbage: bytes) -> None:
    """Non-Thrift first bytes raise NotThrift."""
    with pytest.raises(NotThrift):
        detect(garbage)


def test_http_is_refused_from_its_first_byte() -> None:
    """ "G" cannot start a frame or name length, so one byte suffices to refuse HTTP."""
    with pytest.raises(NotThrift):
        detect(b"G")


def test_decides_within_max_prefix() -> None:
    """A plausible non-strict header with the longest allowed name is decided in bound."""
    name = b"m" * (MAX_DETECT_PREFIX - 9)
    stream = len(name).to_bytes(4, "big") + name + b"\x01" + b"\x00\x00\x00\x01\x00"
    assert detect(stream[:MAX_DETECT_PREFIX]) == (
        TransportKind.BUFFERED,
        ProtocolKind.BINARY_NONSTRICT,
    )


def test_overlong_nonstrict_name_is_not_thrift() -> None:
    """A non-strict name length beyond the detect bound is refused rather than awaited."""
    with pytest.raises(NotThrift):
        detect(b"\x00\x00\x40\x00abcd")


def test_zero_length_frame_is_not_thrift() -> None:
    """A frame too short to hold any message is refused."""
    with pytest.raises(NotThrift):
        detect(b"\x00\x00\x00\x00\x80\x01\x00\x01")
