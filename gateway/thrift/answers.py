"""What to write back to a client whose bytes could not be read, in the client's own dialect."""

from __future__ import annotations

from thrift.Thrift import TApplicationException

from gateway.thrift.appexc import application_exception
from gateway.thrift.framing import encode
from gateway.thrift.kinds import MalformedMessage, ProtocolKind, TransportKind, WireError
from gateway.thrift.theader import HeaderError, reply_frame


def error_answer(exc: WireError, transport: TransportKind, protocol: ProtocolKind) -> bytes | None:
    """The bytes answering the bad message behind ``exc``, or None when none can be written.

    ``transport``/``protocol`` are the connection's (as ``detect`` found them). A
    :class:`MalformedMessage` whose message header decoded is answered with a
    ``TApplicationException`` carrying the caller's method name and seqid; one that came in a
    THeader frame whose header decoded (``exc.frame``) is answered in such a frame, echoing
    its seqid and flags, with no transforms (whatever failed, the answer stays readable) and
    the message header's name/seqid if it decoded, else an empty name and the frame's seqid.
    A :class:`~gateway.thrift.theader.HeaderError` answers with its own ``code``
    (INVALID_TRANSFORM, INVALID_PROTOCOL, else PROTOCOL_ERROR). Everything else (frames too
    large, garbage before any header) has no answer: the caller closes the connection.
    """
    if not isinstance(exc, MalformedMessage):
        return None
    frame = exc.frame
    if frame is None and transport is TransportKind.HEADER:
        return None  # no frame fields to echo: nothing a THeader client could match
    if exc.header is not None:
        name, seqid = exc.header.method, exc.header.seqid
    elif frame is not None:
        name, seqid = "", frame.seqid
    else:
        return None
    code = exc.code if isinstance(exc, HeaderError) else TApplicationException.PROTOCOL_ERROR
    answer = application_exception(
        protocol if frame is None else frame.protocol,
        name,
        seqid,
        code,
        f"gateway: malformed message: {exc}",
    )
    if frame is None:
        return encode(transport, answer)
    return reply_frame(answer, frame)
