"""Generic re-encoding of whole messages between protocols, without the IDL."""

from __future__ import annotations

from gateway.thrift.kinds import DEFAULT_LIMITS, Limits, ProtocolKind
from gateway.thrift.message import MessageHeader, encode_header, read_header, reheader
from gateway.thrift.protocols import OutputBuffer, writer
from gateway.thrift.walk import walk_body

# Enum members as globals on the per-message path (see gateway.thrift.message for why).
_BINARY = ProtocolKind.BINARY
_COMPACT = ProtocolKind.COMPACT


def _body_encoding(protocol: ProtocolKind) -> ProtocolKind:
    # Strict and non-strict binary differ only in the message header.
    return _COMPACT if protocol is _COMPACT else _BINARY


def copies_body(src: ProtocolKind, dst: ProtocolKind) -> bool:
    """Whether :func:`transcode` from ``src`` to ``dst`` copies the body verbatim, unread.

    True for the same protocol and for strict <-> non-strict binary: whoever forwards such a
    body must validate it first (``walk.validate_body``), as nothing else reads it.
    """
    return _body_encoding(src) is _body_encoding(dst)


def transcode(
    message: bytes,
    src: ProtocolKind,
    dst: ProtocolKind,
    *,
    name: str | None = None,
    seqid: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    header: MessageHeader | None = None,
) -> bytes:
    """``message`` (a whole ``src`` message) re-encoded as ``dst``, name/seqid optionally replaced.

    When both protocols encode bodies alike (same protocol, or strict <-> non-strict binary)
    only the header is re-encoded and the body is copied verbatim, unvalidated. Otherwise
    the body is walked generically (with ``limits``); :class:`MalformedMessage` if it is bad.
    An empty map read from compact carries no key/value types and is written with STOP (0)
    types, which thrift's readers accept for an empty map.

    ``header``, if given, must be ``read_header(message, src)``: the proxy has parsed it
    already and passes it so each message header is decoded once per call.
    """
    if copies_body(src, dst):
        return reheader(message, src, dst, name=name, seqid=seqid, header=header)
    if header is None:
        header = read_header(message, src)
    out = OutputBuffer(
        bytearray(
            encode_header(
                dst,
                header.name if name is None else name,
                header.type,
                header.seqid if seqid is None else seqid,
            )
        )
    )
    walk_body(message, header, src, writer(dst, out), limits)
    return bytes(out.buf)
