"""CallHandler: one client message to one reply, with in-memory doubles (no network)."""

from __future__ import annotations

from typing import Any

import pytest
from thrift.Thrift import TMessageType, TType
from thrift_messages import decode, message
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from gateway.config import GatewayConfig, build_config
from gateway.contracts import Coordinator
from gateway.errors import (
    INTERNAL_ERROR,
    PROTOCOL_ERROR,
    UNKNOWN_METHOD,
    BackendTimeout,
    BackendUnavailable,
)
from gateway.flights import FlightTable
from gateway.observe import ErrorKinds, HotKeys
from gateway.proxy.handler import CallHandler
from gateway.proxy.local import LocalCoordinator
from gateway.proxy.router import Router
from gateway.stats import NodeStats
from gateway.testing import DirectCoordinator, ScriptedBackend
from gateway.thrift import DEFAULT_LIMITS, ProtocolKind, parse_application_exception, read_header

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")

BINARY, COMPACT = ProtocolKind.BINARY, ProtocolKind.COMPACT
FLAGS: dict[str, str | None] = {"listen": "127.0.0.1:0", "backend": "127.0.0.1:1"}


class Harness:
    def __init__(
        self,
        raw: dict[str, Any] | None = None,
        coordinator: Coordinator | None = None,
        backend_protocol: ProtocolKind = BINARY,
        flags: dict[str, str | None] = FLAGS,
    ) -> None:
        """One ScriptedBackend per configured backend in ``backends``; ``backend`` is the
        default one (else the first)."""
        self.config: GatewayConfig = build_config(raw or {}, flags)
        self.clock = Clock()
        self.stats = NodeStats()
        self.backends = {name: ScriptedBackend(backend_protocol) for name in self.config.backends}
        self.backend = self.backends.get("default") or next(iter(self.backends.values()))
        self.flights = FlightTable(self.clock)
        self.errors = ErrorKinds()
        self.handler = CallHandler(
            Router(self.config),
            self.backends,
            self.flights,
            coordinator if coordinator is not None else DirectCoordinator(),
            self.stats,
            self.clock,
            DEFAULT_LIMITS,
            errors=self.errors,
        )

    def call(
        self, text: bytes, protocol: ProtocolKind = BINARY, seqid: int = 1, **kw: Any
    ) -> list[Any]:
        """Send alertSupervisor(text); return a list that receives the reply (or failure)."""
        msg = message(protocol, "alertSupervisor", [(1, TType.STRING, text)], seqid=seqid, **kw)
        out: list[Any] = []
        self.last = self.handler.handle(msg, protocol)
        self.last.addBoth(out.append)
        return out

    def answer(self, text: bytes) -> None:
        """Answer the default backend's oldest pending call with the string ``text``."""
        self.backend.reply(text)


def reply_text(reply: bytes, protocol: ProtocolKind) -> tuple[int, bytes]:
    _, mtype, seqid, body = decode(protocol, reply)
    assert mtype == TMessageType.REPLY
    return seqid, body[0][2][1]


def test_reply_in_callers_protocol_with_callers_seqid() -> None:
    """A compact caller of a binary backend gets a compact reply carrying its own seqid."""
    h = Harness()
    out = h.call(b"hi", COMPACT, seqid=77)
    h.answer(b"ack:hi")
    assert reply_text(out[0], COMPACT) == (77, b"ack:hi")


def test_identical_calls_across_protocols_join() -> None:
    """Binary, compact and multiplexed callers of the same call share one backend call."""
    h = Harness()
    a = h.call(b"m", BINARY, seqid=1)
    b = h.call(b"m", COMPACT, seqid=2)
    c = h.call(b"m", BINARY, seqid=3, service="Supervisor")
    h.answer(b"ack:m")
    assert len(h.backend.calls) == 1
    assert reply_text(a[0], BINARY) == (1, b"ack:m")
    assert reply_text(b[0], COMPACT) == (2, b"ack:m")
    assert reply_text(c[0], BINARY) == (3, b"ack:m")
    assert (h.stats.calls, h.stats.backend_calls, h.stats.coalesced_local) == (3, 1, 2)


def test_different_arguments_do_not_join() -> None:
    """Calls with different arguments each reach the backend."""
    h = Harness()
    h.call(b"a")
    h.call(b"b")
    assert len(h.backend.calls) == 2


def test_call_after_completion_goes_through_again() -> None:
    """Coalesce mode dedupes only while in flight: an answered call is not remembered."""
    h = Harness()
    h.call(b"m")
    h.answer(b"ack:m")
    h.call(b"m")
    assert len(h.backend.calls) == 2


def test_passthrough_never_joins() -> None:
    """mode = passthrough sends every call to the backend."""
    h = Harness({"methods": {"alertSupervisor": {"mode": "passthrough"}}})
    h.call(b"m")
    h.call(b"m")
    assert len(h.backend.calls) == 2


PASSTHROUGH = {"methods": {"alertSupervisor": {"mode": "passthrough"}}}


def test_passthrough_caller_leaving_cancels_its_backend_call() -> None:
    """A passthrough caller that goes away cancels its own backend call (nobody else waits
    for it) and is no longer counted in flight; a late reply is dropped."""
    h = Harness(PASSTHROUGH)
    out = h.call(b"m")
    assert h.stats.in_flight == 1
    h.last.cancel()
    assert h.backend.cancelled == 1 and h.stats.in_flight == 0
    assert len(out) == 1 and out[0].check(CancelledError)


def test_passthrough_backend_failure_is_the_callers_error_reply() -> None:
    """A passthrough call whose backend call fails gets the gateway's TApplicationException
    with its own seqid, counted as an error."""
    h = Harness(PASSTHROUGH)
    out = h.call(b"m", seqid=7)
    h.backend.fail(BackendTimeout("gateway: backend timeout after 30s"))
    code, text = parse_application_exception(out[0], BINARY)
    assert code == INTERNAL_ERROR and "timeout" in text
    assert read_header(out[0], BINARY).seqid == 7
    assert (h.stats.errors, h.stats.in_flight, h.errors.snapshot()) == (
        1,
        0,
        {"backend_timeout": 1},
    )


def test_oneway_forwarded_never_coalesced() -> None:
    """Identical oneway calls are each forwarded and produce no reply."""
    h = Harness()
    for _ in range(2):
        msg = message(BINARY, "notify", [(1, TType.STRING, b"x")], mtype=TMessageType.ONEWAY)
        out: list[Any] = []
        h.handler.handle(msg, BINARY).addCallback(out.append)
        assert out == [None]
    assert [oneway for _, _, oneway in h.backend.calls] == [True, True]


def test_excluded_fields_do_not_split_the_key() -> None:
    """Calls that differ only in an excluded field (a trace id) join."""
    h = Harness({"methods": {"alertSupervisor": {"exclude_fields": [2]}}})
    for trace in (b"t1", b"t2"):
        msg = message(
            BINARY, "alertSupervisor", [(1, TType.STRING, b"m"), (2, TType.STRING, trace)]
        )
        h.handler.handle(msg, BINARY)
    assert len(h.backend.calls) == 1


def test_backend_failure_reaches_every_waiter_as_internal_error() -> None:
    """A lost backend connection answers every joined caller with INTERNAL_ERROR."""
    h = Harness()
    outs = [h.call(b"m", seqid=i) for i in (1, 2)]
    h.backend.fail(BackendUnavailable("gateway: backend connection lost mid-call"))
    for seqid, out in zip((1, 2), outs, strict=True):
        assert read_header(out[0], BINARY).seqid == seqid
        code, text = parse_application_exception(out[0], BINARY)
        assert code == INTERNAL_ERROR and "connection lost" in text
    assert h.stats.errors == 2


def test_timeout_has_its_own_message() -> None:
    """A backend timeout is INTERNAL_ERROR with a message that says timeout."""
    h = Harness()
    out = h.call(b"m")
    h.backend.fail(BackendTimeout("gateway: backend timeout after 30s"))
    code, text = parse_application_exception(out[0], BINARY)
    assert code == INTERNAL_ERROR and "timeout" in text


def test_unrouted_service_is_unknown_method() -> None:
    """A multiplexed service with no route and no default backend gets UNKNOWN_METHOD."""
    raw = {"backends": {"sup": {"address": "127.0.0.1:1"}}, "routes": {"Supervisor": "sup"}}
    h = Harness(raw, flags={"listen": "127.0.0.1:0"})
    out = h.call(b"m", service="Nope")
    assert parse_application_exception(out[0], BINARY)[0] == UNKNOWN_METHOD
    assert not h.backend.calls


def test_malformed_args_get_protocol_error_with_callers_seqid() -> None:
    """A call whose header decodes but whose args are garbage gets PROTOCOL_ERROR."""
    h = Harness()
    good = message(BINARY, "alertSupervisor", [(1, TType.STRING, b"m")], seqid=9)
    bad = good[: len(good) - 6] + b"\x0b\x00\x01\x7f\xff\xff"  # a string claiming 2 GiB
    out: list[Any] = []
    h.handler.handle(bad, BINARY).addCallback(out.append)
    assert read_header(out[0], BINARY).seqid == 9
    assert parse_application_exception(out[0], BINARY)[0] == PROTOCOL_ERROR


def test_cancelling_one_caller_leaves_the_others() -> None:
    """A caller that goes away is dropped alone; the shared backend call answers the rest."""
    h = Harness()
    h.call(b"m", seqid=1)
    gone = h.last
    gone.addErrback(lambda f: f.trap(CancelledError))
    stays = h.call(b"m", seqid=2)
    gone.cancel()
    h.answer(b"ack:m")
    assert reply_text(stays[0], BINARY) == (2, b"ack:m") and h.backend.cancelled == 0


def test_backend_call_survives_all_callers_leaving() -> None:
    """When every caller has gone the backend call is not cancelled: its result still counts."""
    h = Harness(
        {"methods": {"alertSupervisor": {"mode": "cache", "ttl": 60}}}, LocalCoordinator(Clock())
    )
    h.call(b"m")
    h.last.addErrback(lambda f: f.trap(CancelledError))
    h.last.cancel()
    h.answer(b"ack:m")
    out = h.call(b"m", seqid=5)  # served by the entry the abandoned call cached
    assert h.backend.cancelled == 0 and len(h.backend.calls) == 1
    assert reply_text(out[0], BINARY) == (5, b"ack:m") and h.stats.cache_hits == 1


def test_fresh_cache_hit_is_answered_at_once_without_a_flight() -> None:
    """A call with a fresh local cache entry is answered before handle() returns, in its
    own seqid, with no flight (nothing for a drain to wait on) and counted as a hot key."""
    hot = HotKeys()
    h = Harness(
        {"methods": {"alertSupervisor": {"mode": "cache", "ttl": 60}}}, LocalCoordinator(Clock())
    )
    h.flights = FlightTable(h.clock, hot_keys=hot)
    h.handler = CallHandler(
        Router(h.config), h.backends, h.flights, LocalCoordinator(h.clock), h.stats, h.clock,
        DEFAULT_LIMITS,
    )  # fmt: skip
    h.call(b"m")
    h.answer(b"ack:m")
    out = h.call(b"m", seqid=9)
    assert h.last.called and len(h.flights) == 0
    assert reply_text(out[0], BINARY) == (9, b"ack:m")
    assert h.stats.cache_hits == 1 and h.stats.in_flight == 0 and len(h.backend.calls) == 1
    [entry] = hot.drain()
    assert entry.callers == 2  # the call that filled the entry, and the hit


def test_caller_after_every_caller_left_joins_the_running_backend_call() -> None:
    """Coalesce mode, no Redis: caller A hangs up mid-call, identical caller B arrives while
    the backend still works on A's call: B joins it, and the backend is called once."""
    h = Harness({}, LocalCoordinator(Clock()))
    h.call(b"page")
    h.last.addErrback(lambda f: f.trap(CancelledError))
    h.last.cancel()
    out = h.call(b"page", seqid=9)
    assert len(h.backend.calls) == 1
    h.answer(b"ack:page")
    assert reply_text(out[0], BINARY) == (9, b"ack:page")


def test_error_replies_are_counted_by_kind() -> None:
    """Every gateway-made error reply is counted under its kind (timeout, malformed, ...)."""
    h = Harness()
    h.call(b"slow")
    h.backend.fail(BackendTimeout("gateway: backend timeout after 30s"))
    bad = message(BINARY, "alertSupervisor", [(1, TType.STRING, b"x")])[:-3]
    h.handler.handle(bad, BINARY)
    assert h.errors.snapshot() == {"backend_timeout": 1, "malformed": 1}
    assert h.stats.errors == 2


def test_same_method_of_two_multiplexed_services_is_two_calls() -> None:
    """Supervisor:stats and Poetry:stats with equal arguments on one multiplexed backend are
    sent as two backend calls, and each caller gets its own service's reply."""
    h = Harness({"backends": {"default": {"address": "h:1", "multiplexed": True}}})
    sup = h.call(b"x", seqid=1, service="Supervisor")
    poe = h.call(b"x", seqid=2, service="Poetry")
    names = [read_header(m, BINARY).name for m, _, _ in h.backend.calls]
    assert names == ["Supervisor:alertSupervisor", "Poetry:alertSupervisor"]
    h.answer(b"from-supervisor")
    h.answer(b"from-poetry")
    assert reply_text(sup[0], BINARY) == (1, b"from-supervisor")
    assert reply_text(poe[0], BINARY) == (2, b"from-poetry")


def test_multiplexed_backend_gets_service_prefixed_name() -> None:
    """A plain client call to a multiplexed backend is sent as Service:method."""
    raw = {
        "backends": {"default": {"address": "h:1", "multiplexed": True, "service": "Supervisor"}}
    }
    h = Harness(raw)
    h.call(b"m")
    assert read_header(h.backend.calls[0][0], BINARY).name == "Supervisor:alertSupervisor"


def test_in_flight_gauge_returns_to_zero() -> None:
    """in_flight counts waiting callers and drops back once they are answered."""
    h = Harness()
    h.call(b"m")
    h.call(b"m")
    assert h.stats.in_flight == 2
    h.answer(b"ack:m")
    assert h.stats.in_flight == 0


def test_handler_never_raises_on_a_backend_reply_it_cannot_read() -> None:
    """A garbage reply from the backend becomes INTERNAL_ERROR for the caller."""
    h = Harness()
    out = h.call(b"m")
    h.backend.answer(b"\x80\x01\x00\x02garbage")
    assert parse_application_exception(out[0], BINARY)[0] == INTERNAL_ERROR


def test_malformed_passthrough_call_never_reaches_the_backend() -> None:
    """Bytes forwarded unchanged are still checked: a garbage passthrough call is refused."""
    h = Harness({"methods": {"alertSupervisor": {"mode": "passthrough"}}})
    good = message(BINARY, "alertSupervisor", [(1, TType.STRING, b"m")], seqid=3)
    bad = good[: len(good) - 6] + b"\x0b\x00\x01\x7f\xff\xff"
    out: list[Any] = []
    h.handler.handle(bad, BINARY).addCallback(out.append)
    assert parse_application_exception(out[0], BINARY)[0] == PROTOCOL_ERROR
    assert not h.backend.calls


ROUTED = {"backends": {"sup": {"address": "127.0.0.1:2"}}, "routes": {"Supervisor": "sup"}}


def test_service_route_picks_its_backend() -> None:
    """routes.Supervisor = "sup": a Supervisor: call goes to sup, a plain call to default."""
    h = Harness(ROUTED)
    routed = h.call(b"r", seqid=1, service="Supervisor")
    plain = h.call(b"p", seqid=2)
    sup, default = h.backends["sup"], h.backend
    assert len(sup.calls) == 1 and len(default.calls) == 1
    sup.reply(b"ack:r")
    default.reply(b"ack:p")
    assert reply_text(routed[0], BINARY) == (1, b"ack:r")
    assert reply_text(plain[0], BINARY) == (2, b"ack:p")


def test_unrouted_service_falls_back_to_default_backend() -> None:
    """A multiplexed service with no route goes to the default backend when there is one."""
    h = Harness(ROUTED)
    out = h.call(b"m", service="Other")
    assert len(h.backend.calls) == 1 and not h.backends["sup"].calls
    h.answer(b"ack:m")
    assert reply_text(out[0], BINARY) == (1, b"ack:m")


def test_method_backend_overrides_service_route() -> None:
    """A method's own backend setting wins over its service's route."""
    raw = {**ROUTED, "methods": {"Supervisor:alertSupervisor": {"backend": "default"}}}
    h = Harness(raw)
    h.call(b"m", service="Supervisor")
    assert len(h.backend.calls) == 1 and not h.backends["sup"].calls


def test_oneway_after_a_pending_call_does_not_confuse_answers() -> None:
    """A oneway recorded after a waiting call leaves that call the oldest pending one."""
    h = Harness()
    out = h.call(b"m", seqid=4)
    oneway = message(BINARY, "notify", [(1, TType.STRING, b"x")], mtype=TMessageType.ONEWAY)
    h.handler.handle(oneway, BINARY)
    h.answer(b"ack:m")
    assert reply_text(out[0], BINARY) == (4, b"ack:m")
