"""In-memory doubles for unit tests of the proxy: no network, no processes.

Only tests import this module (tests/test_layout.py checks that no product module does);
process helpers shared with the demo and benchmarks are in gateway.processes.
"""

from __future__ import annotations

from collections.abc import Callable

from thrift.Thrift import TType
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.python.failure import Failure

from gateway.contracts import BackendCall, MethodPolicy, Outcome, Source
from gateway.errors import GatewayError
from gateway.thrift import Headers, MessageHeader, MessageType, ProtocolKind, read_header
from gateway.thrift.message import encode_header
from gateway.thrift.protocols import OutputBuffer, writer

# ---------------------------------------------------------------------------------------------
# In-memory doubles
# ---------------------------------------------------------------------------------------------


class ScriptedBackend:
    """A backend double (``proxy.handler.BackendLike``): records calls, the test answers them.

    ``calls`` holds (message, policy, oneway) per call and ``headers`` the THeader info
    headers each was sent with; ``pending`` the (message, Deferred) pairs of calls not yet
    answered, in arrival order (oneway calls never wait, so they are only in ``calls``).
    Cancelling one records it in ``cancelled``.
    """

    def __init__(self, protocol: ProtocolKind = ProtocolKind.BINARY) -> None:
        self._protocol = protocol
        self.calls: list[tuple[bytes, MethodPolicy, bool]] = []
        self.headers: list[Headers] = []
        self.pending: list[tuple[bytes, Deferred[bytes]]] = []
        self.cancelled = 0

    @property
    def protocol(self) -> ProtocolKind:
        return self._protocol

    def call(
        self,
        message: bytes,
        policy: MethodPolicy,
        oneway: bool = False,
        header: MessageHeader | None = None,
        headers: Headers = (),
    ) -> Deferred[bytes]:
        self.calls.append((message, policy, oneway))
        self.headers.append(headers)
        if oneway:
            return succeed(b"")

        def cancelled(_: Deferred[bytes]) -> None:
            self.cancelled += 1

        d: Deferred[bytes] = Deferred(cancelled)
        self.pending.append((message, d))
        return d

    def submit(
        self,
        message: bytes,
        policy: MethodPolicy,
        on_reply: Callable[[bytes | GatewayError, MessageHeader | None], None],
        header: MessageHeader | None = None,
        headers: Headers = (),
    ) -> Deferred[bytes]:
        """The callback form (``Backend.submit``), recorded and answered like :meth:`call`."""
        d = self.call(message, policy, header=header, headers=headers)

        def failed(reason: Failure) -> None:
            if not isinstance(reason.value, CancelledError):  # cancelled: nobody to tell
                exc = reason.value
                on_reply(exc if isinstance(exc, GatewayError) else GatewayError(str(exc)), None)

        d.addCallbacks(lambda reply: on_reply(reply, None), failed)
        return d

    def answer(self, reply: bytes) -> None:
        """Fire the oldest pending call with ``reply`` (a whole reply message)."""
        self.pending.pop(0)[1].callback(reply)

    def fail(self, exc: BaseException) -> None:
        """Fail the oldest pending call with ``exc``."""
        self.pending.pop(0)[1].errback(exc)

    def reply(self, success: bytes) -> None:
        """Answer the oldest pending call with a REPLY whose result (field 0) is the string
        ``success``, carrying that call's method name and seqid."""
        header = read_header(self.pending[0][0], self._protocol)
        out = OutputBuffer(
            bytearray(encode_header(self._protocol, header.name, MessageType.REPLY, header.seqid))
        )
        p = writer(self._protocol, out)
        p.writeStructBegin("result")
        p.writeFieldBegin("success", TType.STRING, 0)
        p.writeBinary(success)
        p.writeFieldEnd()
        p.writeFieldStop()
        p.writeStructEnd()
        self.answer(bytes(out.buf))


class DirectCoordinator:
    """A ``contracts.Coordinator`` that always calls the backend and records the keys it saw
    (also a cluster node's local fallback in tests: :attr:`calls` counts what fell back)."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    @property
    def calls(self) -> int:
        return len(self.keys)

    def execute(
        self, key: str, policy: MethodPolicy, call_backend: BackendCall
    ) -> Deferred[Outcome]:
        self.keys.append(key)
        return call_backend().addCallback(lambda reply: Outcome(reply, Source.BACKEND))

    def cached(self, key: str, policy: MethodPolicy) -> Outcome | None:
        return None
