"""One client call, from decoded message to the reply bytes for that client.

Path of a call: route -> (passthrough | call identity -> the node's flight table: join the
flight in progress for that key, or start one in which the coordinator decides: cache /
follow another node / call the backend) -> reply re-encoded in the caller's own protocol with
the caller's own seqid.

THeader callers: the frame's info headers are not part of the call key, except those the
method names in ``key_headers`` (see :meth:`Route.identify`). The call that reaches the
backend is the leader's (the caller whose call started the flight), so only the leader's info
headers go upstream (to a ``transport = "header"`` backend); followers' headers do not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Protocol

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.contracts import BackendReply, Coordinator, MethodPolicy, Outcome, Source
from gateway.errors import INTERNAL_ERROR, INVALID_MESSAGE_TYPE, PROTOCOL_ERROR, GatewayError
from gateway.flights import FlightTable
from gateway.observe import ErrorRecorder, error_kind
from gateway.proxy.fairness import client_scope, current_client
from gateway.proxy.router import Route, Router
from gateway.reactors import as_clock
from gateway.stats import NodeStats
from gateway.thrift import (
    HeaderInfo,
    Headers,
    Limits,
    MalformedMessage,
    MessageHeader,
    MessageType,
    ProtocolKind,
    application_exception,
    read_header,
    transcode,
    validate_body,
)
from gateway.thrift.preview import preview_args
from gateway.thrift.transcode import copies_body

log = logging.getLogger("gateway.proxy")


# Enum members as globals on the per-call path (see gateway.thrift.message for why).
_CALL = MessageType.CALL
_ONEWAY = MessageType.ONEWAY
_BACKEND = Source.BACKEND


class LatencySink(Protocol):
    def observe(
        self, method: str, source: str, seconds: float, configured: bool = False
    ) -> None: ...


class BackendLike(Protocol):
    """What the handler needs of a backend (``proxy.backend.Backend``, or a test double)."""

    @property
    def protocol(self) -> ProtocolKind: ...

    def call(
        self,
        message: bytes,
        policy: MethodPolicy,
        oneway: bool = False,
        header: MessageHeader | None = None,
        headers: Headers = (),
    ) -> Deferred[bytes]:
        """``header``, if given, is ``read_header(message, protocol)`` (spares a decode);
        ``headers`` are THeader info headers for a backend that speaks THeader."""
        ...

    def submit(
        self,
        message: bytes,
        policy: MethodPolicy,
        on_reply: Callable[[bytes | GatewayError, MessageHeader | None], None],
        header: MessageHeader | None = None,
        headers: Headers = (),
    ) -> Cancellable | None:
        """One attempt, answered through ``on_reply`` (reply and its header, or the failure);
        for calls that are neither retried nor hedged. None: it failed at once."""
        ...


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class CallHandler:
    """Turns one client message into (at most) one reply message, never raising."""

    def __init__(
        self,
        router: Router,
        backends: Mapping[str, BackendLike],
        flights: FlightTable,
        coordinator: Coordinator,
        stats: NodeStats,
        clock: IReactorTime,
        limits: Limits,
        metrics: LatencySink | None = None,
        errors: ErrorRecorder | None = None,
    ) -> None:
        self._router = router
        self._errors = errors
        self._backends = backends
        self._flights = flights
        self._coordinator = coordinator
        self._stats = stats
        self._clock = as_clock(clock)
        self._limits = limits
        self._metrics = metrics

    def reroute(self, router: Router, backends: Mapping[str, BackendLike]) -> None:
        """Route calls that arrive from now on with ``router`` to ``backends`` (a reload).

        Calls already underway keep the route and backend they resolved on arrival: both
        are looked up once, at the top of :meth:`handle`, and held by the call from there.
        """
        self._router = router
        self._backends = backends

    def handle(
        self,
        message: bytes,
        protocol: ProtocolKind,
        header: MessageHeader | None = None,
        info: HeaderInfo | None = None,
        peer: bytes = b"",
    ) -> Deferred[bytes | None]:
        """Fire with the reply message for the client (None for oneway); never fails.

        Cancelling the returned Deferred (the client went away) drops only this caller.
        ``header``, if given, must be ``read_header(message, protocol)``: the server's
        reader decodes it while splitting the stream, and it is passed on (here and to the
        wire functions below) so that a call's header is decoded once, not once per step.
        ``info``: the THeader frame the call came in (None for framed/buffered callers): its
        ``key_headers`` join the call key, its info headers go upstream if this call leads.
        ``peer``: the caller's verified client certificate (``proxy.tls.peer_identity``),
        part of the key of ``key_peer`` methods. The reply is the bare message; the server
        frames it.
        """
        if header is None:
            try:
                header = read_header(message, protocol)
            except MalformedMessage as exc:
                # Without a header there is no seqid to answer with; the server closes.
                return defer.fail(exc)
        self._stats.calls += 1
        if header.type is not _CALL and header.type is not _ONEWAY:
            return self._error(
                header, protocol, INVALID_MESSAGE_TYPE, "gateway: expected a call", "malformed"
            )
        try:
            route = self._router.resolve(header.service, header.method)
            backend = self._backends[route.backend]
            if header.type is _CALL and route.policy.mode != "passthrough":
                # Walks the body: malformed arguments stop here.
                key: str | None = route.identify(
                    message, protocol, header, self._limits, info, peer
                ).key
                eager: tuple[bytes, MessageHeader | None] | None = None
            else:
                key = None
                if copies_body(protocol, backend.protocol):
                    # Forwarded verbatim (same protocol, or strict <-> non-strict binary),
                    # oneway too: nothing else reads these bytes. A backend that cannot
                    # decode a call may drop its connection, and other clients' calls on it
                    # with it. (Otherwise transcoding walks, and so validates, the body.)
                    validate_body(message, header, protocol, self._limits)
                eager = self._upstream(message, protocol, header, backend.protocol, route)
        except GatewayError as exc:
            return self._error(header, protocol, exc.code, exc.message, error_kind(exc))
        except MalformedMessage as exc:
            message_text = f"gateway: malformed call: {exc}"
            return self._error(header, protocol, PROTOCOL_ERROR, message_text, "malformed")

        # This caller's info headers travel with its call if it reaches the backend.
        upstream_headers = info.headers if info is not None else ()
        if header.type is _ONEWAY:
            assert eager is not None
            # Oneway calls carry no reply to share, so they are forwarded, never coalesced.
            self._stats.backend_calls += 1
            oneway = backend.call(
                eager[0], route.policy, oneway=True, header=eager[1], headers=upstream_headers
            )
            oneway.addErrback(_log_oneway_failure)
            return defer.succeed(None)

        if key is None and not route.policy.idempotent:
            assert eager is not None
            return self._forward(backend, eager, route, header, protocol, upstream_headers)

        preview = None
        if key is not None and route.preview:  # opted in: the key is known to be well-formed
            preview = preview_args(message, protocol, route.preview, header=header)
        if key is not None and route.policy.mode == "cache":
            hit = self._coordinator.cached(key, route.policy)
            if hit is not None:  # answered now: no flight, no Deferred chain
                self._flights.answered(key, preview)
                self._count(hit.source, False)
                self._observe(header.method, hit.source.value, 0.0, route.configured)
                return defer.succeed(self._reply_from(hit, header, protocol))

        started = self._clock.seconds()
        self._stats.in_flight += 1
        backend_protocol = backend.protocol
        # A flight's leader may call the backend later (once Redis has decided): its call
        # counts against this client's fair share of the backend all the same.
        client = current_client()

        def backend_reply(reply: bytes) -> BackendReply:
            # Its kind is worked out only if a cache or another node needs it.
            return BackendReply(reply, backend_protocol)

        def call_backend() -> Deferred[BackendReply]:
            # Re-encoded only here: a call that joins another or is answered from a cache
            # never pays for it (identify() above already checked the body).
            upstream, upstream_header = eager or self._upstream(
                message, protocol, header, backend_protocol, route
            )
            self._stats.backend_calls += 1
            # Only the leader's call_backend runs (followers join its flight), so these are
            # the leader's headers.
            with client_scope(client):
                if route.policy.idempotent:  # retried or hedged: the Deferred form
                    return backend.call(
                        upstream, route.policy, header=upstream_header, headers=upstream_headers
                    ).addCallback(backend_reply)
                return _single_attempt(
                    backend, upstream, route.policy, upstream_header, upstream_headers
                )

        d: Deferred[tuple[Outcome, bool]]
        if key is None:
            d = call_backend().addCallback(_from_backend)
        else:
            start = partial(self._coordinator.execute, key, route.policy, call_backend)
            d = self._flights.join(key, start, preview)

        def done(result: tuple[Outcome, bool] | Failure) -> bytes | Failure | None:
            self._stats.in_flight -= 1
            if isinstance(result, Failure):
                if isinstance(result.value, CancelledError):
                    return result  # the client is gone; nobody to answer
                source = "error"
                reply = self._failure_reply(header, protocol, result)
            else:
                outcome, shared = result
                source = "joined" if shared else outcome.source.value
                self._count(outcome.source, shared)
                reply = self._reply_from(outcome, header, protocol)
            self._observe(header.method, source, self._clock.seconds() - started, route.configured)
            return reply

        return d.addBoth(done)

    def _forward(
        self,
        backend: BackendLike,
        upstream: tuple[bytes, MessageHeader | None],
        route: Route,
        header: MessageHeader,
        protocol: ProtocolKind,
        upstream_headers: Headers,
    ) -> Deferred[bytes | None]:
        """A passthrough call: nothing to share, nothing to retry - so it is forwarded with
        callbacks, and the caller's Deferred is the only one it costs (this is the path whose
        CPU per call the gateway's overhead is measured by)."""
        started = self._clock.seconds()
        self._stats.in_flight += 1
        self._stats.backend_calls += 1
        pending: Cancellable | None = None

        def caller_gone(_: Deferred[bytes | None]) -> None:
            self._stats.in_flight -= 1
            if pending is not None:
                pending.cancel()

        answer: Deferred[bytes | None] = Deferred(caller_gone)
        backend_protocol = backend.protocol

        def on_reply(result: bytes | GatewayError, reply_header: MessageHeader | None) -> None:
            self._stats.in_flight -= 1
            if isinstance(result, GatewayError):
                source = "error"
                reply = self._error_bytes(
                    header, protocol, result.code, result.message, error_kind(result)
                )
            else:
                source = "backend"
                reply = self._reencode(result, backend_protocol, reply_header, header, protocol)
            self._observe(header.method, source, self._clock.seconds() - started, route.configured)
            answer.callback(reply)

        message, upstream_header = upstream
        pending = backend.submit(
            message, route.policy, on_reply, header=upstream_header, headers=upstream_headers
        )
        return answer

    def _reencode(
        self,
        reply: bytes,
        reply_protocol: ProtocolKind,
        reply_header: MessageHeader | None,
        header: MessageHeader,
        protocol: ProtocolKind,
    ) -> bytes:
        """The backend's reply as this caller's: its protocol, its seqid, the bare name."""
        try:
            return transcode(
                reply,
                reply_protocol,
                protocol,
                name=header.method,
                seqid=header.seqid,
                limits=self._limits,
                header=reply_header,
            )
        except MalformedMessage as exc:
            log.warning("backend reply for %s could not be re-encoded: %s", header.name, exc)
            return self._error_bytes(
                header, protocol, INTERNAL_ERROR, "gateway: bad backend reply", "internal"
            )

    def _upstream(
        self,
        message: bytes,
        protocol: ProtocolKind,
        header: MessageHeader,
        backend_protocol: ProtocolKind,
        route: Route,
    ) -> tuple[bytes, MessageHeader | None]:
        """The bytes to send upstream, and their header when it is the caller's own."""
        if protocol is backend_protocol and header.name == route.upstream_name:
            return message, header  # the pool rewrites the seqid; nothing else to change
        # Between protocols this walks (and so checks) the body.
        upstream = transcode(
            message, protocol, backend_protocol, name=route.upstream_name,
            limits=self._limits, header=header,
        )  # fmt: skip
        return upstream, None

    def _reply_from(self, outcome: Outcome, header: MessageHeader, protocol: ProtocolKind) -> bytes:
        """The outcome's reply for this caller: its seqid, in its protocol."""
        answer = outcome.reply
        return self._reencode(
            answer.message, ProtocolKind(answer.protocol), answer.header, header, protocol
        )

    def _count(self, source: Source, shared: bool) -> None:
        if shared:
            self._stats.coalesced_local += 1
        elif source is Source.CACHE or source is Source.STALE:
            self._stats.cache_hits += 1
        elif source is Source.REMOTE:
            self._stats.coalesced_remote += 1

    def _observe(self, method: str, source: str, seconds: float, configured: bool) -> None:
        if self._metrics is None:
            return
        self._metrics.observe(method, source, seconds, configured)

    def _failure_reply(
        self, header: MessageHeader, protocol: ProtocolKind, reason: Failure
    ) -> bytes:
        exc = reason.value
        kind = error_kind(exc)
        if isinstance(exc, GatewayError):
            return self._error_bytes(header, protocol, exc.code, exc.message, kind)
        log.error("unexpected failure for %s: %s", header.name, reason.getTraceback())
        return self._error_bytes(header, protocol, INTERNAL_ERROR, "gateway: internal error", kind)

    def _error_bytes(
        self, header: MessageHeader, protocol: ProtocolKind, code: int, message: str, kind: str
    ) -> bytes:
        self._count_error(kind)
        return application_exception(protocol, header.method, header.seqid, code, message)

    def _count_error(self, kind: str) -> None:
        self._stats.errors += 1
        if self._errors is not None:
            self._errors.count(kind)

    def _error(
        self, header: MessageHeader, protocol: ProtocolKind, code: int, message: str, kind: str
    ) -> Deferred[bytes | None]:
        if header.type is MessageType.ONEWAY:
            self._count_error(kind)
            log.warning("dropping oneway %s: %s", header.name, message)
            return defer.succeed(None)  # a oneway caller reads no reply
        return defer.succeed(self._error_bytes(header, protocol, code, message, kind))


def _single_attempt(
    backend: BackendLike,
    message: bytes,
    policy: MethodPolicy,
    header: MessageHeader | None,
    headers: Headers,
) -> Deferred[BackendReply]:
    """One attempt through ``Backend.submit``, as a Deferred of the reply: it keeps the
    header the upstream connection parsed (the callers' replies need no second parse)."""
    pending: Cancellable | None = None

    def cancel(_: Deferred[BackendReply]) -> None:
        if pending is not None:
            pending.cancel()

    d: Deferred[BackendReply] = Deferred(cancel)
    protocol = backend.protocol

    def on_reply(result: bytes | GatewayError, reply_header: MessageHeader | None) -> None:
        if d.called:
            return
        if isinstance(result, GatewayError):
            d.errback(result)
        else:
            d.callback(BackendReply(result, protocol, header=reply_header))

    pending = backend.submit(message, policy, on_reply, header=header, headers=headers)
    return d


def _from_backend(reply: BackendReply) -> tuple[Outcome, bool]:
    return Outcome(reply, _BACKEND), False


def _log_oneway_failure(reason: Failure) -> None:
    log.warning("oneway call not delivered: %s", reason.getErrorMessage())
