"""A short, human-readable preview of a call's arguments (for hot keys of opted-in methods).

``{1: "disk full", 2: [1, 2], 3: {"k": 1.5}}``: the argument struct by field id, strings as
JSON strings (bytes that are not UTF-8 as ``0x`` + hex), lists and sets in brackets, maps
and structs in braces. Cut to ``limit`` characters with a trailing ``…``. Arguments may hold
personal data: only methods whose config sets ``preview`` should ever be previewed.
"""

from __future__ import annotations

import contextlib
import json
from uuid import UUID

from gateway.thrift.kinds import DEFAULT_LIMITS, Limits, ProtocolKind
from gateway.thrift.message import MessageHeader, read_header
from gateway.thrift.walk import walk_body

ELLIPSIS = "…"


class _Full(Exception):
    """The preview has all the characters it may show: stop walking."""


class PreviewSink:
    """A write-only "protocol" (like the call key's CanonicalSink) that renders text."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[str] = []
        self._length = 0
        # Per open container: values written so far and whether it is a map (key: value).
        self._open: list[tuple[list[int], bool]] = []

    @property
    def text(self) -> str:
        text = "".join(self._parts)
        return text if len(text) <= self._limit else text[: self._limit] + ELLIPSIS

    def _put(self, text: str) -> None:
        self._parts.append(text)
        self._length += len(text)
        if self._length > self._limit:
            raise _Full

    def _value(self, text: str) -> None:
        if self._open:
            count, is_map = self._open[-1]
            if is_map:
                if count[0] % 2 == 1:
                    text = ": " + text
                elif count[0]:
                    text = ", " + text
            elif count[0]:
                text = ", " + text
            count[0] += 1
        self._put(text)

    def _begin(self, opener: str, is_map: bool) -> None:
        self._value(opener)
        self._open.append(([0], is_map))

    def _end(self, closer: str) -> None:
        self._open.pop()
        self._put(closer)

    # -- structs: field id -> value, as a map --------------------------------------------------

    def writeStructBegin(self, name: str) -> None:
        self._begin("{", is_map=True)

    def writeFieldBegin(self, name: str, ttype: int, fid: int) -> None:
        self._value(str(fid))

    def writeFieldEnd(self) -> None:
        pass

    def writeFieldStop(self) -> None:
        pass

    def writeStructEnd(self) -> None:
        self._end("}")

    # -- containers -----------------------------------------------------------------------------

    def writeListBegin(self, etype: int, size: int) -> None:
        self._begin("[", is_map=False)

    def writeListEnd(self) -> None:
        self._end("]")

    writeSetBegin = writeListBegin
    writeSetEnd = writeListEnd

    def writeMapBegin(self, ktype: int, vtype: int, size: int) -> None:
        self._begin("{", is_map=True)

    def writeMapEnd(self) -> None:
        self._end("}")

    # -- scalars --------------------------------------------------------------------------------

    def writeBool(self, value: bool) -> None:
        self._value("true" if value else "false")

    def _number(self, value: int | float) -> None:
        self._value(repr(value))

    writeByte = writeI16 = writeI32 = writeI64 = writeDouble = _number

    def writeBinary(self, value: bytes) -> None:
        try:
            self._value(json.dumps(value.decode("utf-8"), ensure_ascii=False))
        except UnicodeDecodeError:
            self._value("0x" + value.hex())

    def writeUuid(self, value: UUID) -> None:
        self._value(str(value))


def preview_args(
    message: bytes,
    protocol: ProtocolKind,
    limit: int,
    *,
    limits: Limits = DEFAULT_LIMITS,
    header: MessageHeader | None = None,
) -> str:
    """The preview of a CALL/ONEWAY message's arguments, at most ``limit`` characters (plus
    ``…`` when cut). Raises ``MalformedMessage`` like the call key does for bad bodies that
    are read before the preview is full."""
    if header is None:
        header = read_header(message, protocol)
    sink = PreviewSink(limit)
    # walk_body's error translation lets exceptions other than decode errors through.
    with contextlib.suppress(_Full):
        walk_body(message, header, protocol, sink, limits)
    return sink.text
