"""Every body that goes upstream has been validated, whatever the protocol pair (issue 16)."""

from __future__ import annotations

import itertools

import pytest
from thrift.Thrift import TMessageType, TType
from thrift_messages import decode, message
from twisted.internet.task import Clock

from gateway.config import build_config
from gateway.flights import FlightTable
from gateway.proxy.handler import CallHandler
from gateway.proxy.router import Router
from gateway.stats import NodeStats
from gateway.testing import DirectCoordinator, ScriptedBackend
from gateway.thrift import DEFAULT_LIMITS, ProtocolKind, parse_application_exception

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")

PAIRS = list(itertools.product(ProtocolKind, repeat=2))
BAD_TYPE = 0x55


def _bad_call(kind: ProtocolKind, name: str, mtype: int) -> bytes:
    """``name`` (seqid 9) whose body's only field has the invalid type id 0x55."""
    good = message(kind, name, [(1, TType.I32, 5)], mtype=mtype, seqid=9)
    if kind is ProtocolKind.COMPACT:
        body = b"\x15\x0a\x00"  # field 1 (delta 1), i32 zigzag(5), STOP
        assert good.endswith(body)
        return good[: -len(body)] + bytes([0x10 | 0x0D]) + b"\x0a\x00"  # type nibble 13: map
    body = b"\x08\x00\x01\x00\x00\x00\x05\x00"
    assert good.endswith(body)
    return good[: -len(body)] + bytes([BAD_TYPE]) + body[1:]


def _handler(backend: ScriptedBackend, mode: str) -> CallHandler:
    config = build_config(
        {"methods": {"alertSupervisor": {"mode": mode} | ({"ttl": 60} if mode == "cache" else {})}},
        {"listen": "127.0.0.1:0", "backend": "127.0.0.1:1"},
    )
    return CallHandler(
        Router(config), {"default": backend}, FlightTable(Clock()), DirectCoordinator(),
        NodeStats(), Clock(), DEFAULT_LIMITS,
    )  # fmt: skip


@pytest.mark.parametrize(("caller", "upstream"), PAIRS, ids=lambda k: str(k))
@pytest.mark.parametrize("mode", ["passthrough", "coalesce", "cache"])
def test_malformed_call_never_reaches_the_backend(
    caller: ProtocolKind, upstream: ProtocolKind, mode: str
) -> None:
    """A call with an invalid body is answered PROTOCOL_ERROR and not sent upstream, for every
    caller/backend protocol pair (strict vs non-strict binary included) and every mode."""
    backend = ScriptedBackend(upstream)
    out: list[object] = []
    _handler(backend, mode).handle(
        _bad_call(caller, "alertSupervisor", TMessageType.CALL), caller
    ).addBoth(out.append)
    assert backend.calls == []
    reply = out[0]
    assert isinstance(reply, bytes)
    _, mtype, seqid, _ = decode(caller, reply)
    assert (mtype, seqid) == (TMessageType.EXCEPTION, 9)
    assert "malformed call" in parse_application_exception(reply, caller)[1]


@pytest.mark.parametrize(("caller", "upstream"), PAIRS, ids=lambda k: str(k))
def test_malformed_oneway_never_reaches_the_backend(
    caller: ProtocolKind, upstream: ProtocolKind
) -> None:
    """A oneway call with an invalid body is dropped, not sent upstream, for every pair."""
    backend = ScriptedBackend(upstream)
    out: list[object] = []
    _handler(backend, "coalesce").handle(
        _bad_call(caller, "notify", TMessageType.ONEWAY), caller
    ).addBoth(out.append)
    assert backend.calls == []
    assert out == [None]
