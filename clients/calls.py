"""Encoding calls and decoding replies with the generated structs and stock thrift only.

The py:twisted generator's ``Client`` classes need Twisted and do not fit a blocking socket,
so the blocking client and the herd driver write the ``*_args`` / read the ``*_result``
structs themselves; this module holds the few lines they share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from thrift.protocol.TBinaryProtocol import (
    TBinaryProtocolAcceleratedFactory,
    TBinaryProtocolFactory,
)
from thrift.protocol.TCompactProtocol import TCompactProtocolAcceleratedFactory
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.Thrift import TApplicationException, TException, TMessageType
from thrift.transport import TTransport

from gateway.config import parse_address
from gateway.examples.gen.poetry import Poetry
from gateway.examples.gen.supervisor import Supervisor


def protocol_factory(name: str) -> Any:
    """A thrift protocol factory: ``binary`` (strict), ``binary-nonstrict`` or ``compact``."""
    if name == "binary":
        return TBinaryProtocolAcceleratedFactory()
    if name == "binary-nonstrict":
        # Old-style header (name first, no version word); the accelerated factory cannot
        # write it, the plain one can.
        return TBinaryProtocolFactory(strictWrite=False)
    if name == "compact":
        return TCompactProtocolAcceleratedFactory()
    raise ValueError(f"unknown protocol {name!r} (binary, binary-nonstrict, compact)")


PROTOCOLS = ("binary", "binary-nonstrict", "compact")


def parse_target(value: str, what: str = "target") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port), by the gateway's own parser;
    raises ``ValueError`` (``ConfigError``) whose message starts with ``what``."""
    address = parse_address(value, what)
    return address.host, address.port


@dataclass(frozen=True)
class Method:
    """One IDL method: its service (the TMultiplexedProtocol prefix) and generated structs."""

    service: str
    name: str
    args: type
    result: type | None  # None: oneway, no reply

    @property
    def oneway(self) -> bool:
        return self.result is None


ALERT = Method(
    "Supervisor",
    "alertSupervisor",
    Supervisor.alertSupervisor_args,
    Supervisor.alertSupervisor_result,
)
NOTIFY = Method("Supervisor", "notify", Supervisor.notify_args, None)
GET_POEM = Method("Poetry", "getPoem", Poetry.getPoem_args, Poetry.getPoem_result)
BACKEND_STATS = {
    "supervisor": Method(
        "Supervisor",
        "backendStats",
        Supervisor.backendStats_args,
        Supervisor.backendStats_result,
    ),
    "poetry": Method(
        "Poetry", "backendStats", Poetry.backendStats_args, Poetry.backendStats_result
    ),
}


def write_call(
    oprot: Any, method: Method, seqid: int, *, multiplexed: bool = False, **fields: Any
) -> None:
    """Write one CALL (or ONEWAY) message; the caller flushes the transport."""
    prot = TMultiplexedProtocol(oprot, method.service) if multiplexed else oprot
    mtype = TMessageType.ONEWAY if method.oneway else TMessageType.CALL
    prot.writeMessageBegin(method.name, mtype, seqid)
    method.args(**fields).write(prot)
    prot.writeMessageEnd()


def encode_call(
    factory: Any, method: Method, seqid: int, *, multiplexed: bool = False, **fields: Any
) -> bytes:
    """One whole unframed call message as bytes."""
    buf = TTransport.TMemoryBuffer()
    write_call(factory.getProtocol(buf), method, seqid, multiplexed=multiplexed, **fields)
    message: bytes = buf.getvalue()
    return message


def read_result(iprot: Any, method: Method, mtype: int) -> Any:
    """Read a reply body whose header was already read; return the result or raise.

    Raises the declared exception (``SupervisorBusy``, ``PoemNotFound``) or thrift's
    ``TApplicationException``, after consuming the whole message either way.
    """
    if mtype == TMessageType.EXCEPTION:
        error = TApplicationException()
        error.read(iprot)
        iprot.readMessageEnd()
        raise error
    assert method.result is not None, "oneway methods have no reply"
    result = method.result()
    result.read(iprot)
    iprot.readMessageEnd()
    if getattr(result, "success", None) is not None:
        return result.success
    # Declared exceptions are the result struct's fields other than 0 ("success").
    for spec in result.thrift_spec[1:]:
        if spec is not None and getattr(result, spec[2]) is not None:
            raise getattr(result, spec[2])
    raise TApplicationException(
        TApplicationException.MISSING_RESULT, f"{method.name} failed: unknown result"
    )


def decode_reply(factory: Any, message: bytes, method: Method) -> tuple[int, Any]:
    """(seqid, result) of one whole unframed reply; raises like :func:`read_result`.

    A reply of another method raises ``TApplicationException(WRONG_METHOD_NAME)``.
    """
    iprot = factory.getProtocol(TTransport.TMemoryBuffer(message))
    name, mtype, seqid = iprot.readMessageBegin()
    check_name(name, method)
    return seqid, read_result(iprot, method, mtype)


def check_name(name: str, method: Method) -> None:
    """Servers answer with the bare method name; tolerate a ``Service:`` prefix too."""
    if name.rpartition(":")[2] != method.name:
        raise TApplicationException(
            TApplicationException.WRONG_METHOD_NAME,
            f"expected a reply to {method.name}, got {name!r}",
        )


def describe_error(exc: BaseException | None) -> str:
    """One line for a failed call; generated exceptions' ``str()`` is empty, so use repr."""
    if exc is None:  # Failure.value is typed Optional; a Failure always carries one
        return "unknown failure"
    if isinstance(exc, TApplicationException):
        return f"TApplicationException({exc.type}): {exc.message}"
    if isinstance(exc, TException) and not str(exc):
        return repr(exc)
    return f"{type(exc).__name__}: {exc}"
