"""Test helpers: build and decode messages with the real thrift library (no gateway code).

A value is described by a type descriptor: a ``TType`` int for scalars and structs, or
``(TType.LIST, elem)``, ``(TType.SET, elem)``, ``(TType.MAP, key, value)`` for containers.
Struct values are lists of ``(field_id, descriptor, value)``; lists and sets are Python lists,
maps lists of ``(key, value)`` pairs, strings ``bytes``.
"""

from __future__ import annotations

import struct
from typing import Any

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.Thrift import TMessageType, TType
from thrift.transport.TTransport import TMemoryBuffer

from gateway.thrift import ProtocolKind

Desc = Any  # int | tuple
Fields = list[tuple[int, Desc, Any]]

ALL_PROTOCOLS = list(ProtocolKind)


def ttype(desc: Desc) -> int:
    return desc if isinstance(desc, int) else int(desc[0])


def thrift_protocol(kind: ProtocolKind, trans: Any) -> Any:
    """The thrift library's own protocol for ``kind``."""
    if kind is ProtocolKind.COMPACT:
        return TCompactProtocol(trans)
    return TBinaryProtocol(trans, strictRead=False, strictWrite=kind is ProtocolKind.BINARY)


def write_value(p: Any, desc: Desc, value: Any) -> None:
    t = ttype(desc)
    if t == TType.STRUCT:
        write_struct(p, value)
    elif t in (TType.LIST, TType.SET):
        begin, end = (
            (p.writeListBegin, p.writeListEnd)
            if t == TType.LIST
            else (p.writeSetBegin, p.writeSetEnd)
        )
        begin(ttype(desc[1]), len(value))
        for element in value:
            write_value(p, desc[1], element)
        end()
    elif t == TType.MAP:
        p.writeMapBegin(ttype(desc[1]), ttype(desc[2]), len(value))
        for key, val in value:
            write_value(p, desc[1], key)
            write_value(p, desc[2], val)
        p.writeMapEnd()
    else:
        writers = {
            TType.BOOL: p.writeBool,
            TType.BYTE: p.writeByte,
            TType.I16: p.writeI16,
            TType.I32: p.writeI32,
            TType.I64: p.writeI64,
            TType.DOUBLE: p.writeDouble,
            TType.STRING: p.writeBinary,
            TType.UUID: p.writeUuid,
        }
        writers[t](value)


def write_struct(p: Any, fields: Fields) -> None:
    p.writeStructBegin("S")
    for fid, desc, value in fields:
        p.writeFieldBegin("f", ttype(desc), fid)
        write_value(p, desc, value)
        p.writeFieldEnd()
    p.writeFieldStop()
    p.writeStructEnd()


def message(
    kind: ProtocolKind,
    name: str,
    fields: Fields,
    *,
    mtype: int = TMessageType.CALL,
    seqid: int = 1,
    service: str | None = None,
) -> bytes:
    """A whole message encoded by the thrift library (TMultiplexedProtocol if ``service``)."""
    buf = TMemoryBuffer()
    p = thrift_protocol(kind, buf)
    if service is not None:
        p = TMultiplexedProtocol(p, service)
    p.writeMessageBegin(name, mtype, seqid)
    write_struct(p, fields)
    p.writeMessageEnd()
    return bytes(buf.getvalue())


def read_value(p: Any, t: int) -> Any:
    """A generic decode (thrift library only) into comparable Python values."""
    if t == TType.STRUCT:
        return read_struct(p)
    if t in (TType.LIST, TType.SET):
        etype, size = p.readListBegin() if t == TType.LIST else p.readSetBegin()
        items = [read_value(p, etype) for _ in range(size)]
        p.readListEnd()
        return ("list" if t == TType.LIST else "set", etype, items)
    if t == TType.MAP:
        ktype, vtype, size = p.readMapBegin()
        entries = [(read_value(p, ktype), read_value(p, vtype)) for _ in range(size)]
        p.readMapEnd()
        return ("map", ktype, vtype, entries)
    if t == TType.DOUBLE:
        return ("double", struct.pack(">d", p.readDouble()))  # NaN-safe comparison
    readers = {
        TType.BOOL: p.readBool,
        TType.BYTE: p.readByte,
        TType.I16: p.readI16,
        TType.I32: p.readI32,
        TType.I64: p.readI64,
        TType.STRING: p.readBinary,
        TType.UUID: p.readUuid,
    }
    return (t, readers[t]())


def read_struct(p: Any) -> list[tuple[int, int, Any]]:
    p.readStructBegin()
    fields = []
    while True:
        _, t, fid = p.readFieldBegin()
        if t == TType.STOP:
            break
        fields.append((fid, t, read_value(p, t)))
        p.readFieldEnd()
    p.readStructEnd()
    return fields


def decode(kind: ProtocolKind, data: bytes) -> tuple[str, int, int, list[tuple[int, int, Any]]]:
    """(name, type, seqid, body) of a whole message, decoded by the thrift library alone."""
    buf = TMemoryBuffer(data)
    p = thrift_protocol(kind, buf)
    name, mtype, seqid = p.readMessageBegin()
    body = read_struct(p)
    p.readMessageEnd()
    assert buf.read(1) == b"", "trailing bytes"
    return name, mtype, seqid, body


def nest(depth: int) -> Fields:
    """Args whose field 1 is a struct nested ``depth`` levels deep (the body counts as 1)."""
    fields: Fields = [(1, TType.I32, 7)]
    for _ in range(depth - 1):
        fields = [(1, TType.STRUCT, fields)]
    return fields


# A rich argument struct exercising every kind of value.
RICH_ARGS: Fields = [
    (1, TType.STRING, b"hello"),
    (2, TType.BOOL, True),
    (3, TType.BOOL, False),
    (4, TType.BYTE, -7),
    (5, TType.I16, -300),
    (6, TType.I32, 123456),
    (7, TType.I64, -(2**40)),
    (8, TType.DOUBLE, 2.5),
    (9, TType.STRING, b"\xff\x00binary\x80"),
    (10, (TType.LIST, TType.I32), [3, 1, 2]),
    (11, (TType.SET, TType.STRING), [b"b", b"a"]),
    (12, (TType.MAP, TType.STRING, TType.I64), [(b"x", 1), (b"y", 2)]),
    (13, TType.STRUCT, [(1, TType.STRING, b"inner"), (2, (TType.LIST, TType.BOOL), [True, False])]),
    (14, (TType.LIST, TType.STRUCT), [[(1, TType.I16, 1)], [(1, TType.I16, 2)]]),
    (15, (TType.MAP, TType.I32, (TType.SET, TType.DOUBLE)), [(1, [0.5, -0.5])]),
    (300, TType.I64, 1),  # a field id delta too large for compact's short form
]
