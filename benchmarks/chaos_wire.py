"""The chaos soak's Thrift: calls to the counting backend's services, and checking replies.

Calls and replies are encoded and decoded by thriftpy2 (not the gateway's own wire code, so
a gateway bug cannot hide behind a shared codec), from the black-box tests' IDL
(tests/idl/guarantees.thrift). On a buffered connection the end of a reply is found by the
stock Apache ``thrift`` library skipping over it (thriftpy2's Cython decoder does not notice
a truncated message); only the exact message bytes then go to thriftpy2.

A reply is *correct* when it is the answer to its own call: the counting backend's ``Echo``
names the service and method that answered and echoes the arguments, and ``Busy`` carries
the paged message. Anything else that decodes as a reply is a *crossed* reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import thriftpy2
from thrift.protocol import TBinaryProtocol as ApacheBinary
from thrift.protocol import TCompactProtocol as ApacheCompact
from thrift.Thrift import TType
from thrift.transport import TTransport
from thriftpy2 import protocol as thriftpy2_protocol
from thriftpy2 import transport as thriftpy2_transport
from thriftpy2.thrift import TApplicationException, TMessageType

IDL = Path(__file__).resolve().parent.parent / "tests" / "idl" / "guarantees.thrift"
guarantees: Any = thriftpy2.load(str(IDL), module_name="chaos_guarantees_thrift")

# thriftpy2's protocol and buffer factories are untyped (Cython or not, chosen at import).
TBinaryProtocol: Any = thriftpy2_protocol.TBinaryProtocol
TCompactProtocol: Any = thriftpy2_protocol.TCompactProtocol
TMemoryBuffer: Any = thriftpy2_transport.TMemoryBuffer

PROTOCOLS = ("binary", "compact")
TRANSPORTS = ("framed", "buffered")


@dataclass(frozen=True)
class CallSpec:
    """One call identity: every caller of a herd sends exactly this."""

    service: str  # "Supervisor" or "Poetry"
    method: str  # "echo", "lookup" or "page"
    arg: str  # echo/lookup argument, or page's message
    opts: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0  # seconds the backend sleeps (echo, lookup)

    @property
    def backend_name(self) -> str:
        """The name the counting backend logs this call's arrivals under."""
        opts = sorted(self.opts) if self.method != "page" else []
        return f"{self.service}:{self.method}:{self.arg}:{opts}"


@dataclass(frozen=True)
class Reply:
    seqid: int
    kind: str  # "echo", "busy", "gateway_error", "other_error"
    correct: bool
    message: str = ""  # the TApplicationException's message
    detail: str = ""  # what the reply said (for the report of a crossed reply)


def _protocol(name: str, buf: Any) -> Any:
    return TBinaryProtocol(buf) if name == "binary" else TCompactProtocol(buf)


def encode_call(
    spec: CallSpec, protocol: str, transport: str, multiplexed: bool, seqid: int
) -> bytes:
    """The call as sent by a client of that protocol/transport (framed: with its frame)."""
    service = getattr(guarantees, spec.service)
    if spec.method == "page":
        args = service.page_args(message=spec.arg)
    else:
        args = getattr(service, f"{spec.method}_args")(
            arg=spec.arg, opts=dict(spec.opts), delay=spec.delay
        )
    name = f"{spec.service}:{spec.method}" if multiplexed else spec.method
    buf = TMemoryBuffer()
    proto = _protocol(protocol, buf)
    proto.write_message_begin(name, TMessageType.CALL, seqid)
    proto.write_struct(args)
    proto.write_message_end()
    message: bytes = buf.getvalue()
    if transport == "framed":
        return len(message).to_bytes(4, "big") + message
    return message


def split_reply(data: bytes, protocol: str, transport: str) -> tuple[bytes | None, bytes]:
    """(the first whole message in ``data``, the bytes after it); (None, data) if none yet."""
    if transport == "framed":
        if len(data) < 4:
            return None, data
        size = int.from_bytes(data[:4], "big")
        if len(data) < 4 + size:
            return None, data
        return data[4 : 4 + size], data[4 + size :]
    buf = TTransport.TMemoryBuffer(data)
    proto: Any = (
        ApacheBinary.TBinaryProtocol(buf)
        if protocol == "binary"
        else ApacheCompact.TCompactProtocol(buf)
    )
    try:
        proto.readMessageBegin()
        proto.skip(TType.STRUCT)
        proto.readMessageEnd()
    except EOFError:
        return None, data
    end: int = buf._buffer.tell()  # the Apache TMemoryBuffer reads from a BytesIO
    return data[:end], data[end:]


def decode_reply(message: bytes, protocol: str, spec: CallSpec) -> Reply:
    """Decode one whole reply message to ``spec``'s call and judge it."""
    proto = _protocol(protocol, TMemoryBuffer(message))
    name, mtype, seqid = proto.read_message_begin()
    if mtype == TMessageType.EXCEPTION:
        exc = TApplicationException()
        proto.read_struct(exc)
        text = str(exc.message or "")
        kind = "gateway_error" if text.startswith("gateway:") else "other_error"
        return Reply(seqid, kind, correct=False, message=text)
    service = getattr(guarantees, spec.service)
    result = getattr(service, f"{spec.method}_result")()
    proto.read_struct(result)
    busy = getattr(result, "busy", None)
    if busy is not None:
        return Reply(seqid, "busy", correct=busy.why == spec.arg, detail=f"{name}: {busy}")
    echo = result.success
    if echo is None:
        return Reply(seqid, "other_error", correct=False, message=f"empty {name} result")
    correct = (
        str(name).rpartition(":")[2] == spec.method
        and echo.answered_by == spec.service
        and echo.method == spec.method
        and echo.arg == spec.arg
        and echo.opts == dict(spec.opts)
    )
    return Reply(seqid, "echo", correct=correct, detail=f"{name}: {echo}")


def expected_kind(spec: CallSpec) -> str:
    """What a correct answer to ``spec`` is: an Echo, or Busy for ``page("busy:...")``."""
    return "busy" if spec.method == "page" and spec.arg.startswith("busy:") else "echo"
