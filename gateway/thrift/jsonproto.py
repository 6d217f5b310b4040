"""TJSONProtocol messages: splitting a stream of them, and converting them to and from binary.

A TJSONProtocol message is one JSON array, ``[1,"name",type,seqid,{"1":{"i32":5},...}]``
(Apache Thrift's TJSONProtocol; values are tagged with their type: ``tf i8 i16 i32 i64 dbl
str rec lst set map uid``). The gateway keys, caches and forwards binary messages, so a JSON
call is converted to strict binary on arrival and the binary reply back to JSON on the way
out; a JSON caller therefore gets the same call identity as a binary caller of the same call.
The conversion is thrift's own TJSONProtocol class driven by the generic walker
(:mod:`gateway.thrift.walk`), so the JSON read and written is exactly what thrift reads/writes.

The one thing JSON does not carry is whether a ``str`` is a ``string`` or a ``binary``
(generated code base64-encodes binary values; the gateway has no IDL). Rule: a JSON ``str``
is forwarded as its UTF-8 text; a reply string is written as text when it is valid UTF-8,
else base64 (it can only be binary). A binary argument therefore reaches a binary backend as
its base64 text (so it does not coalesce with a binary caller's raw bytes), and a binary
result that happens to be valid UTF-8 reaches a JSON caller as text its generated code then
base64-decodes. Echo-style methods round-trip exactly; see docs/dialects-notes.md.
"""

from __future__ import annotations

import json
import re
from typing import Any

from thrift.protocol.TJSONProtocol import QUOTE, TJSONProtocol

from gateway.thrift.kinds import DEFAULT_LIMITS, Limits, MalformedMessage, MessageType, ProtocolKind
from gateway.thrift.message import MessageHeader, encode_header, read_header
from gateway.thrift.protocols import DECODE_ERRORS, OutputBuffer, writer
from gateway.thrift.walk import walk_body, walk_struct

_BINARY = ProtocolKind.BINARY
_MESSAGE_TYPES = {t.value: t for t in MessageType}
# Characters that matter when finding where a JSON value ends, outside and inside strings.
_OUTSIDE = re.compile(rb'[\[\]{}"]')
_INSIDE = re.compile(rb'["\\]')
_WHITESPACE = b" \t\r\n"
# The rest of a JSON string after its opening quote: escapes skipped, up to the closing quote.
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_ERRORS: tuple[type[Exception], ...] = (
    *DECODE_ERRORS,
    TypeError,
    IndexError,
    UnicodeDecodeError,
    EOFError,
)

_HEADER_ERRORS: tuple[type[Exception], ...] = (MalformedMessage, *_ERRORS)


class _Input:
    """The read-only transport TJSONProtocol reads from: ``read(n)``, b"" at the end."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def read(self, size: int) -> bytes:
        start = self.pos
        self.pos = min(start + size, len(self.buf))
        return self.buf[start : self.pos]

    readAll = read


class _Json(TJSONProtocol):  # type: ignore[misc]  # thrift ships no type information
    """TJSONProtocol with the gateway's rules for ``str`` and with collection limits.

    The walker reads and writes every string as binary (values are opaque bytes); here a
    JSON string is its UTF-8 text and a reply string is text unless it is not UTF-8.
    """

    def __init__(self, trans: Any, limits: Limits) -> None:
        super().__init__(trans, string_length_limit=limits.max_string_size)
        self._max_collection = limits.max_collection_size
        self._max_string = limits.max_string_size

    def readJSONString(self, skipContext: bool) -> str:
        # thrift's own reads a string a character at a time (~4 us each); this finds its end
        # with one regex and lets the json module unescape it. Only on _Input (its buffer
        # and position are ours), and only once the lookahead byte has been consumed, which
        # reading the opening quote always does.
        if skipContext is False:
            self.context.read()
        self.readJSONSyntaxChar(QUOTE)
        inp = self.trans
        start = inp.pos
        match = _STRING_REST.match(inp.buf, start)
        if match is None:
            raise MalformedMessage("unterminated JSON string")
        if match.end() - start - 1 > self._max_string * 6:  # \uXXXX: 6 bytes a character
            raise MalformedMessage("JSON string exceeds max_string_size")
        text = json.loads(inp.buf[start - 1 : match.end()])
        if len(text) > self._max_string:
            raise MalformedMessage("JSON string exceeds max_string_size")
        inp.pos = match.end()
        assert isinstance(text, str)
        return text

    def _check(self, size: int) -> int:
        if not 0 <= size <= self._max_collection:
            raise MalformedMessage(f"collection of {size} elements exceeds the limit")
        return size

    def readBinary(self) -> bytes:
        text: str = self.readString()
        return text.encode("utf-8")

    def writeBinary(self, value: bytes) -> None:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            super().writeBinary(value)
        else:
            self.writeString(text)

    def readListBegin(self) -> tuple[int, int]:
        etype, size = super().readListBegin()
        return etype, self._check(size)

    def readSetBegin(self) -> tuple[int, int]:
        etype, size = super().readSetBegin()
        return etype, self._check(size)

    def readMapBegin(self) -> tuple[int, int, int]:
        ktype, vtype, size = super().readMapBegin()
        return ktype, vtype, self._check(size)


def json_to_binary(message: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """One whole TJSONProtocol message as a strict binary message (same name, type, seqid).

    :class:`MalformedMessage` when it is not one; carrying the header once that decoded.
    """
    inp = _Input(message)
    prot = _Json(inp, limits)
    try:
        name, mtype, seqid = prot.readMessageBegin()
        head = encode_header(_BINARY, name, _MESSAGE_TYPES[mtype], seqid)
    except _HEADER_ERRORS as exc:
        raise MalformedMessage(f"bad TJSONProtocol message header: {exc}") from None
    header = read_header(head, _BINARY)
    out = OutputBuffer(bytearray(head))
    try:
        walk_struct(prot, writer(_BINARY, out), limits)
        prot.readMessageEnd()
    except MalformedMessage as exc:
        raise MalformedMessage(str(exc), header) from None
    except _ERRORS as exc:
        raise MalformedMessage(f"bad TJSONProtocol message body: {exc!r}", header) from None
    if message[inp.pos :].strip(_WHITESPACE):
        raise MalformedMessage("bytes after the TJSONProtocol message", header)
    return bytes(out.buf)


def binary_to_json(
    message: bytes, limits: Limits = DEFAULT_LIMITS, header: MessageHeader | None = None
) -> bytes:
    """A strict binary message as TJSONProtocol (:class:`MalformedMessage` if it is bad)."""
    if header is None:
        header = read_header(message, _BINARY)
    out = OutputBuffer()
    prot = _Json(out, limits)
    prot.writeMessageBegin(header.name, int(header.type), header.seqid)
    walk_body(message, header, _BINARY, prot, limits)
    prot.writeMessageEnd()
    return bytes(out.buf)


class JsonSplitter:
    """Incremental splitter of a stream of TJSONProtocol messages (arrays back to back).

    Finds where each top-level array ends by bracket depth, skipping strings (and their
    escapes), without decoding anything; the state is kept between feeds, so every byte is
    scanned once. Bounds: a message over ``max_frame_size`` bytes, or nested deeper than
    twice ``max_depth`` plus the envelope (every struct level is two JSON levels), is a
    :class:`MalformedMessage`; so is anything but whitespace before a message's ``[``.
    """

    @property
    def held(self) -> int:
        """Bytes of a JSON message not yet whole."""
        return len(self._buf)

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._buf = bytearray()
        self._limits = limits
        self._max_depth = 2 * limits.max_depth + 4
        self._pos = 0  # scanned up to here
        self._depth = 0
        self._in_string = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """The whole messages completed by ``data``, in order."""
        buf = self._buf
        buf += data
        messages: list[bytes] = []
        while True:
            if self._depth == 0 and not self._in_string:
                start = 0
                while start < len(buf) and buf[start] in _WHITESPACE:
                    start += 1
                if start:
                    del buf[:start]
                if not buf:
                    break
                if buf[0] != 0x5B:  # "["
                    raise MalformedMessage("a TJSONProtocol message does not start with '['")
                self._pos = 0
            end = self._scan(buf)
            if end is None:
                limit = self._limits.max_frame_size
                if len(buf) > limit:
                    raise MalformedMessage(f"TJSONProtocol message exceeds max_frame_size {limit}")
                break
            messages.append(bytes(buf[:end]))
            del buf[:end]
            self._pos = 0
        return messages

    def _scan(self, buf: bytearray) -> int | None:
        """Where the message at the start of ``buf`` ends, or None (state kept)."""
        pos = self._pos
        while True:
            if self._in_string:
                match = _INSIDE.search(buf, pos)
                if match is None:
                    self._pos = len(buf)
                    return None
                pos = match.end()
                if buf[match.start()] == 0x5C:  # a backslash escapes the next character
                    if pos >= len(buf):
                        self._pos = match.start()  # rescan the escape once it is whole
                        return None
                    pos += 1
                else:
                    self._in_string = False
                continue
            match = _OUTSIDE.search(buf, pos)
            if match is None:
                self._pos = len(buf)
                return None
            pos = match.end()
            char = buf[match.start()]
            if char == 0x22:  # '"'
                self._in_string = True
            elif char in (0x5B, 0x7B):  # "[" "{"
                self._depth += 1
                if self._depth > self._max_depth:
                    raise MalformedMessage(
                        f"TJSONProtocol message nested deeper than {self._max_depth}"
                    )
            else:
                self._depth -= 1
                if self._depth == 0:
                    return pos
                if self._depth < 0:
                    raise MalformedMessage("unbalanced brackets in a TJSONProtocol message")


__all__ = ["JsonSplitter", "binary_to_json", "json_to_binary"]
