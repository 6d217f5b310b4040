"""A resumable skipper over message bodies: where an unframed message ends, in O(its size).

An unframed (buffered-transport) message ends where its body struct ends, so the reader must
skip the body to find the next message. Re-walking the body from its start each time more
bytes arrive costs O(size^2 / chunk) (a 1.6 MB list of small structs in 64 KiB chunks took
11 s of reactor time). :class:`BodySkipper` instead keeps where it stopped - the position
and an explicit stack of the structs and containers it is inside - and resumes there.

It checks what finding the boundary needs (valid type ids, sizes and lengths within the
limits, nesting within ``max_depth``, canonical bools and minimal varints); the cut message
is then validated like any other by whoever reads it (``walk.validate_body``, the call key).
"""

from __future__ import annotations

from gateway.thrift.binscan import (
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
)
from gateway.thrift.kinds import Limits, MalformedMessage, ProtocolKind
from gateway.thrift.protocols import Buffer, Truncated

_BINARY_FIXED = {BOOL: 1, BYTE: 1, I16: 2, I32: 4, I64: 8, DOUBLE: 8, UUID: 16}
# Compact type nibbles -> TType (1 and 2 are bool true/false), as thrift's TCompactProtocol.
_COMPACT_TYPES = {
    1: BOOL, 2: BOOL, 3: BYTE, 4: I16, 5: I32, 6: I64, 7: DOUBLE, 8: STRING, 9: LIST, 10: SET,
    11: MAP, 12: STRUCT, 13: UUID,
}  # fmt: skip
_COMPACT_FIXED = {BYTE: 1, DOUBLE: 8, UUID: 16}
_COMPACT_VARINT = frozenset({I16, I32, I64})
_NESTED = frozenset({STRUCT, LIST, SET, MAP})

# Stack frames (lists, mutated in place): [_STRUCT], [_VALUE, type], [_ELEMENTS, type, left],
# [_ENTRIES, key type, value type, values left] (a map's keys and values alternate).
_STRUCT, _VALUE, _ELEMENTS, _ENTRIES = range(4)


class BodySkipper:
    """Skips one body struct of ``protocol`` starting at ``start``; feed it the growing
    buffer with :meth:`skip` until it returns where the body ends."""

    def __init__(self, protocol: ProtocolKind, start: int, limits: Limits) -> None:
        self.compact = protocol is ProtocolKind.COMPACT
        self.pos = start
        self.limits = limits
        self.stack: list[list[int]] = [[_STRUCT]]
        self.depth = 1  # structs and containers open (the body is 1)
        self.bool_elements = False  # compact: the innermost collection holds bools

    def rebase(self, offset: int) -> None:
        """The buffer is about to lose its first ``offset`` bytes (messages before this one)."""
        self.pos -= offset

    def skip(self, buf: Buffer) -> int:
        """Where the body ends; :class:`Truncated` (with the buffer length needed) if it does
        not end within ``buf`` yet - call again with more - or :class:`MalformedMessage`."""
        end = len(buf)
        stack = self.stack
        while stack:
            frame = stack[-1]
            kind = frame[0]
            if kind == _STRUCT:
                self._field(buf, end, frame)
            elif kind == _VALUE:
                self._value(buf, end, frame[1])
            elif kind == _ELEMENTS:
                if frame[2] == 0:
                    stack.pop()
                    self.depth -= 1
                    continue
                frame[2] -= 1
                stack.append([_VALUE, frame[1]])
            else:
                if frame[3] == 0:
                    stack.pop()
                    self.depth -= 1
                    continue
                frame[3] -= 1
                stack.append([_VALUE, frame[1] if frame[3] % 2 else frame[2]])
        return self.pos

    # -- one step each: consume bytes and change the stack only once they are all there ----

    def _field(self, buf: Buffer, end: int, frame: list[int]) -> None:
        pos = self.pos
        if pos >= end:
            raise Truncated(pos + 1)
        byte = buf[pos]
        if self.compact:
            if byte & 0x0F == STOP:
                self._close(pos + 1)
                return
            ttype = _compact_type(byte & 0x0F)
            stop = pos + 1
            if not byte >> 4:  # long form: a zigzag i16 field id follows
                stop = _varint_end(buf, stop, end)
            self.pos = stop
            if ttype == BOOL:
                return  # the value is in the type nibble
            self.stack.append([_VALUE, ttype])
            return
        if byte == STOP:
            self._close(pos + 1)
            return
        if pos + 3 > end:
            raise Truncated(pos + 3)
        _check(byte)
        self.pos = pos + 3
        self.stack.append([_VALUE, byte])

    def _close(self, pos: int) -> None:
        self.pos = pos
        self.stack.pop()
        self.depth -= 1

    def _value(self, buf: Buffer, end: int, ttype: int) -> None:
        pos = self.pos
        if ttype in _NESTED and self.depth + 1 > self.limits.max_depth:
            raise MalformedMessage(f"nesting deeper than {self.limits.max_depth}")
        if ttype == STRUCT:
            self.stack[-1] = [_STRUCT]
            self.depth += 1
            return
        if self.compact:
            self._compact_value(buf, pos, end, ttype)
        else:
            self._binary_value(buf, pos, end, ttype)

    def _binary_value(self, buf: Buffer, pos: int, end: int, ttype: int) -> None:
        size = _BINARY_FIXED.get(ttype)
        if size is not None:
            if pos + size > end:
                raise Truncated(pos + size)
            if ttype == BOOL and buf[pos] > 1:
                raise MalformedMessage(f"bool byte {buf[pos]} (only 0 and 1 are canonical)")
            self._done(pos + size)
        elif ttype == STRING:
            if pos + 4 > end:
                raise Truncated(pos + 4)
            stop = pos + 4 + self._string_size(int.from_bytes(buf[pos : pos + 4], signed=True))
            if stop > end:
                raise Truncated(stop)
            self._done(stop)
        elif ttype == MAP:
            if pos + 6 > end:
                raise Truncated(pos + 6)
            ktype, vtype = buf[pos], buf[pos + 1]
            count = self._count(int.from_bytes(buf[pos + 2 : pos + 6], signed=True))
            if count:
                _check(ktype)
                _check(vtype)
            self.pos = pos + 6
            self._open([_ENTRIES, ktype, vtype, 2 * count])
        else:
            if pos + 5 > end:
                raise Truncated(pos + 5)
            etype = buf[pos]
            _check(etype)
            count = self._count(int.from_bytes(buf[pos + 1 : pos + 5], signed=True))
            self.pos = pos + 5
            self._open([_ELEMENTS, etype, count])

    def _compact_value(self, buf: Buffer, pos: int, end: int, ttype: int) -> None:
        size = _COMPACT_FIXED.get(ttype)
        if size is not None:
            if pos + size > end:
                raise Truncated(pos + size)
            self._done(pos + size)
        elif ttype == BOOL:  # a collection element: one byte
            if pos >= end:
                raise Truncated(pos + 1)
            if buf[pos] not in (1, 2):
                raise MalformedMessage(f"bool element {buf[pos]} (only 1 and 2 are canonical)")
            self._done(pos + 1)
        elif ttype in _COMPACT_VARINT:
            self._done(_varint_end(buf, pos, end))
        elif ttype == STRING:
            stop = _varint_end(buf, pos, end)
            stop += self._string_size(_varint(buf, pos))
            if stop > end:
                raise Truncated(stop)
            self._done(stop)
        elif ttype == MAP:
            stop = _varint_end(buf, pos, end)
            count = self._count(_varint(buf, pos))
            if not count:
                self.pos = stop
                self._open([_ENTRIES, STOP, STOP, 0])
                return
            if stop >= end:
                raise Truncated(stop + 1)
            types = buf[stop]
            ktype, vtype = _compact_type(types >> 4), _compact_type(types & 0x0F)
            self.pos = stop + 1
            self._open([_ENTRIES, ktype, vtype, 2 * count])
        else:
            if pos >= end:
                raise Truncated(pos + 1)
            header = buf[pos]
            etype = _compact_type(header & 0x0F)
            count, stop = header >> 4, pos + 1
            if count == 15:
                stop = _varint_end(buf, stop, end)
                count = _varint(buf, pos + 1)
            self.pos = stop
            self._open([_ELEMENTS, etype, self._count(count)])

    def _done(self, pos: int) -> None:
        self.pos = pos
        self.stack.pop()  # the _VALUE frame

    def _open(self, frame: list[int]) -> None:
        self.stack[-1] = frame  # replaces the _VALUE frame
        self.depth += 1

    def _string_size(self, size: int) -> int:
        if size < 0:
            raise MalformedMessage("negative string length")
        if size > self.limits.max_string_size:
            raise MalformedMessage(f"string of {size} bytes exceeds {self.limits.max_string_size}")
        return size

    def _count(self, size: int) -> int:
        if size < 0:
            raise MalformedMessage("negative collection size")
        if size > self.limits.max_collection_size:
            raise MalformedMessage(
                f"collection of {size} exceeds {self.limits.max_collection_size}"
            )
        return size


def _check(ttype: int) -> None:
    if ttype not in VALUE_TYPES:
        raise MalformedMessage(f"invalid type id {ttype}")


def _compact_type(nibble: int) -> int:
    ttype = _COMPACT_TYPES.get(nibble)
    if ttype is None:
        raise MalformedMessage(f"invalid compact type {nibble}")
    return ttype


def _varint_end(buf: Buffer, pos: int, end: int) -> int:
    """Where the (minimal, at most 10-byte) varint at ``pos`` ends."""
    for i in range(10):
        if pos + i >= end:
            raise Truncated(pos + i + 1)
        byte = buf[pos + i]
        if not byte & 0x80:
            if byte == 0 and i:
                raise MalformedMessage("non-minimal varint")
            return pos + i + 1
    raise MalformedMessage("varint longer than 10 bytes")


def _varint(buf: Buffer, pos: int) -> int:
    """The value of the (complete, checked) varint at ``pos``."""
    result = shift = 0
    while True:
        byte = buf[pos]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result
        pos += 1
        shift += 7
