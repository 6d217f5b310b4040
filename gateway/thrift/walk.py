"""The generic value walker: read one struct from a thrift protocol, replay it into a sink.

Everything that needs to understand a body without its IDL is this one walk with a
different sink, the sink being anything with thrift's ``write*`` protocol API:

* skipping (message boundaries of unframed streams, validation): :data:`NULL_SINK`;
* transcoding: a thrift protocol of the other kind;
* the canonical form behind call keys: ``gateway.thrift.callkey.CanonicalSink``.

Type ids come from the thrift readers (so compact's two boolean types are already one
``TType.BOOL`` and compact type nibbles are already ``TType`` values) and are validated here;
the readers enforce the string and collection limits, the walker enforces the depth limit.
Every element consumes at least one input byte, so hostile sizes cannot make the walk spin.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from thrift.protocol.TCompactProtocol import TCompactProtocol

from gateway.thrift.binscan import (  # the type ids are defined once, there
    BOOL,
    BYTE,
    DOUBLE,
    I16,
    I32,
    I64,
    LIST,
    MAP,
    SET,
    STOP,
    STRING,
    STRUCT,
    UUID,
    VALUE_TYPES,
    scan_struct,
)
from gateway.thrift.kinds import Limits, MalformedMessage, ProtocolKind
from gateway.thrift.message import MessageHeader
from gateway.thrift.protocols import DECODE_ERRORS, InputBuffer, Truncated, reader

# Scalar type -> (reader method, writer method). Strings are read with readBinary: values
# are opaque bytes (a `binary` field need not be UTF-8) and are never decoded.
SCALARS: dict[int, tuple[str, str]] = {
    BOOL: ("readBool", "writeBool"),
    BYTE: ("readByte", "writeByte"),
    DOUBLE: ("readDouble", "writeDouble"),
    I16: ("readI16", "writeI16"),
    I32: ("readI32", "writeI32"),
    I64: ("readI64", "writeI64"),
    STRING: ("readBinary", "writeBinary"),
    UUID: ("readUuid", "writeUuid"),
}


class NullSink:
    """A sink that discards everything: walking into it only skips (and validates)."""

    def _ignore(self, *args: object) -> None:
        pass

    writeStructBegin = writeStructEnd = writeFieldBegin = writeFieldEnd = _ignore
    writeFieldStop = writeMapBegin = writeMapEnd = writeListBegin = writeListEnd = _ignore
    writeSetBegin = writeSetEnd = writeBool = writeByte = writeI16 = writeI32 = _ignore
    writeI64 = writeDouble = writeBinary = writeUuid = _ignore


NULL_SINK = NullSink()

# The fewest bytes a value of each type can take, per body encoding. When an unframed message
# is truncated inside a container, the elements still to come need at least this much, so the
# reader can wait for that many bytes instead of re-walking the message after every chunk.
_BINARY_MIN_SIZE = {BOOL: 1, BYTE: 1, I16: 2, I32: 4, I64: 8, DOUBLE: 8, STRING: 4, UUID: 16}
_BINARY_MIN_SIZE |= {STRUCT: 1, MAP: 6, SET: 5, LIST: 5}
_COMPACT_MIN_SIZE = dict.fromkeys(VALUE_TYPES, 1) | {DOUBLE: 8, UUID: 16}


def _min_size(iprot: Any, ttype: int) -> int:
    table = _COMPACT_MIN_SIZE if isinstance(iprot, TCompactProtocol) else _BINARY_MIN_SIZE
    return table[ttype]


def check_type(ttype: int) -> None:
    if ttype not in VALUE_TYPES:
        raise MalformedMessage(f"invalid type id {ttype}")


def _check_depth(depth: int, limits: Limits) -> None:
    if depth > limits.max_depth:
        raise MalformedMessage(f"nesting deeper than {limits.max_depth}")


class BodyErrors:
    """Context manager turning any failure to decode a body into a MalformedMessage
    that carries ``header`` (so the caller can still answer the caller's seqid)."""

    __slots__ = ("header",)

    def __init__(self, header: MessageHeader) -> None:
        self.header = header

    def __enter__(self) -> None:
        pass

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        if exc is None:
            return
        if isinstance(exc, MalformedMessage):
            raise MalformedMessage(str(exc), self.header) from None
        if isinstance(exc, Truncated):
            raise MalformedMessage("message body is truncated", self.header) from None
        if isinstance(exc, DECODE_ERRORS):
            raise MalformedMessage(f"bad message body: {exc!r}", self.header) from None


def walk_body(
    message: bytes,
    header: MessageHeader,
    protocol: ProtocolKind,
    sink: Any,
    limits: Limits,
    exclude: Collection[int] = (),
) -> None:
    """Walk the body struct of one whole message into ``sink``.

    Every failure, including a truncated body or bytes after it, is a
    :class:`MalformedMessage` carrying ``header``.
    """
    inp = InputBuffer(message, header.body_offset)
    with BodyErrors(header):
        walk_struct(reader(protocol, inp, limits), sink, limits, exclude=exclude)
    if inp.pos != len(message):
        raise MalformedMessage("bytes after the message body", header)


def walk_struct(
    iprot: Any,
    sink: Any,
    limits: Limits,
    depth: int = 1,
    exclude: Collection[int] = (),
) -> None:
    """Read one struct from ``iprot`` and replay it into ``sink``.

    ``depth`` is the nesting level of this struct (a message body is 1). Fields whose id is
    in ``exclude`` are read but not replayed. Raises :class:`MalformedMessage` (without a
    header; callers add it) for bad type ids and depth; the readers' own errors propagate.
    """
    _check_depth(depth, limits)
    iprot.readStructBegin()
    sink.writeStructBegin("")
    while True:
        _, ftype, fid = iprot.readFieldBegin()
        if ftype == STOP:
            break
        check_type(ftype)
        try:
            if fid in exclude:
                walk_value(iprot, NULL_SINK, ftype, limits, depth)
            else:
                sink.writeFieldBegin("", ftype, fid)
                walk_value(iprot, sink, ftype, limits, depth)
                sink.writeFieldEnd()
        except Truncated as exc:
            # Cut inside a field value: this struct's STOP byte is still to come. (Not when
            # cut inside readFieldBegin: that read may be the STOP itself.)
            exc.need += 1
            raise
        iprot.readFieldEnd()
    sink.writeFieldStop()
    iprot.readStructEnd()
    sink.writeStructEnd()


def walk_value(iprot: Any, sink: Any, ttype: int, limits: Limits, depth: int) -> None:
    """Read one value of ``ttype`` (already validated) found at nesting level ``depth``."""
    # Most frequent first: this branch runs once per value.
    if ttype == STRING:
        sink.writeBinary(iprot.readBinary())
    elif ttype == I32:
        sink.writeI32(iprot.readI32())
    elif ttype == I64:
        sink.writeI64(iprot.readI64())
    elif ttype == STRUCT:
        walk_struct(iprot, sink, limits, depth + 1)
    elif ttype == BOOL:
        sink.writeBool(iprot.readBool())
    elif ttype in (LIST, SET):
        _walk_collection(iprot, sink, ttype, limits, depth + 1)
    elif ttype == MAP:
        _walk_map(iprot, sink, limits, depth + 1)
    else:
        read, write = SCALARS[ttype]
        getattr(sink, write)(getattr(iprot, read)())


def _walk_elements(
    iprot: Any, sink: Any, etype: int, size: int, limits: Limits, depth: int
) -> None:
    names = SCALARS.get(etype)
    done = 0
    try:
        if names is not None:
            # Look the bound methods up once: lists of scalars are the bulk of large messages.
            read = getattr(iprot, names[0])
            write = getattr(sink, names[1])
            for done in range(size):  # noqa: B007 - `done` is read by the except clause
                write(read())
        else:
            for done in range(size):  # noqa: B007 - `done` is read by the except clause
                walk_value(iprot, sink, etype, limits, depth)
    except Truncated as exc:
        exc.need += (size - done - 1) * _min_size(iprot, etype)
        raise


def _walk_collection(iprot: Any, sink: Any, ttype: int, limits: Limits, depth: int) -> None:
    _check_depth(depth, limits)
    if ttype == LIST:
        etype, size = iprot.readListBegin()
        check_type(etype)
        sink.writeListBegin(etype, size)
        _walk_elements(iprot, sink, etype, size, limits, depth)
        iprot.readListEnd()
        sink.writeListEnd()
    else:
        etype, size = iprot.readSetBegin()
        check_type(etype)
        sink.writeSetBegin(etype, size)
        _walk_elements(iprot, sink, etype, size, limits, depth)
        iprot.readSetEnd()
        sink.writeSetEnd()


def _walk_map(iprot: Any, sink: Any, limits: Limits, depth: int) -> None:
    _check_depth(depth, limits)
    ktype, vtype, size = iprot.readMapBegin()
    if size == 0:
        # Compact does not carry the types of an empty map (thrift reports STOP for both);
        # keep binary's if they are valid so binary -> binary stays faithful. Types neither
        # valid nor STOP are refused: some decoders reject them (and binscan does).
        for t in (ktype, vtype):
            if t != STOP:
                check_type(t)
        if ktype == STOP or vtype == STOP:
            ktype = vtype = STOP
    else:
        check_type(ktype)
        check_type(vtype)
    sink.writeMapBegin(ktype, vtype, size)
    done = 0
    try:
        for done in range(size):  # noqa: B007 - `done` is read by the except clause
            walk_value(iprot, sink, ktype, limits, depth)
            walk_value(iprot, sink, vtype, limits, depth)
    except Truncated as exc:
        exc.need += (size - done - 1) * (_min_size(iprot, ktype) + _min_size(iprot, vtype))
        raise
    iprot.readMapEnd()
    sink.writeMapEnd()


def validate_body(
    message: bytes, header: MessageHeader, protocol: ProtocolKind, limits: Limits
) -> None:
    """Check that ``message``'s body is one well-formed struct within ``limits``.

    For messages forwarded byte for byte (same protocol, no call key): a backend that
    cannot decode a call may drop its connection, and with it other clients' calls.
    Raises :class:`MalformedMessage` carrying ``header``.
    """
    if protocol is not ProtocolKind.COMPACT:  # binary bodies: the fast scanner
        scan_body(message, header, limits)
        return
    walk_body(message, header, protocol, NULL_SINK, limits)


def scan_body(message: bytes, header: MessageHeader, limits: Limits) -> bool:
    """Check a binary message's body with the fast scanner; True if it is canonical.

    The same checks as :func:`walk_body` (same limits, same errors, carrying ``header``).
    """
    try:
        end, canonical = scan_struct(message, header.body_offset, limits)
    except MalformedMessage as exc:
        raise MalformedMessage(str(exc), header) from None
    if end != len(message):
        raise MalformedMessage("bytes after the message body", header)
    return canonical
