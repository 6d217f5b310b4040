"""Wrapped client dialects: layers between the socket and the Thrift message stream.

The server splits binary, compact and THeader streams itself (``gateway.thrift.detect`` and
``MessageReader``). Everything else a Thrift client may send is one of those inside one or
more *layers*, peeled off here before the stream reaches the reader, and put back on every
reply, in reverse order:

* :class:`Framed`: TFramedTransport around another transport. ``LEN LEN' 0F FF``: THeader
  inside TFramedTransport (double framing, what Apache's libraries send for ``--protocol
  header --transport framed``); ``LEN 78 xx``: TZlibTransport over TFramedTransport;
  ``LEN [1``: TJSONProtocol over TFramedTransport.
* :class:`Zlib`: TZlibTransport, a zlib stream (first bytes ``78 xx``, a valid zlib header).
  Replies are compressed and sync-flushed one by one, as TZlibTransport's flush does.
* :class:`Json`: TJSONProtocol (first byte ``[``): each JSON message is converted to strict
  binary for the proxy, each binary reply back to JSON (``gateway.thrift.jsonproto``).
* HTTP (``gateway.proxy.http``): ``POST `` requests whose bodies are the stream.

None of these first bytes starts a plain stream (see ``gateway.thrift.detect``: 0x5B, 0x78
and 0x50 are above any plain first byte; a frame carrying the 0x0FFF magic four bytes in is
a frame inside a frame). Layers nest as the clients nest them (zlib inside HTTP, JSON inside
zlib ...); the innermost stream is detected as usual. Limits: every layer keeps at most
``max_frame_size`` (plus a small header) buffered, inflating is bounded per read, and bad
bytes are a :class:`MalformedMessage`, closing only that connection.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Callable
from typing import Protocol

from gateway.errors import INTERNAL_ERROR
from gateway.proxy.http import Http, HttpError
from gateway.thrift import (
    MAX_DETECT_PREFIX,
    Limits,
    MalformedMessage,
    NotThrift,
    ProtocolKind,
    TransportKind,
    application_exception,
    detect,
    read_header,
)
from gateway.thrift.framing import frame
from gateway.thrift.jsonproto import JsonSplitter, binary_to_json, json_to_binary

log = logging.getLogger("gateway.server")
_I32 = struct.Struct(">i")
_HEADER_MAGIC = b"\x0f\xff"
_MAX_LAYERS = 4  # HTTP > framed > zlib > JSON is the deepest real nesting


def max_prefix(limits: Limits) -> int:
    """The most bytes :func:`detect_stack` needs to decide (an HTTP head, then the body's
    first bytes)."""
    return MAX_DETECT_PREFIX + limits.max_header_size + 64


class Layer(Protocol):
    """One layer of a client's stream (see the module docstring)."""

    name: str

    @property
    def held(self) -> int:
        """Bytes this layer buffers until more arrive (they count as a partial message
        against body_timeout and max_partial_bytes, like the reader's own)."""
        ...

    def unwrap(self, data: bytes) -> bytes:
        """The inner stream's bytes carried by ``data`` (raises :class:`MalformedMessage`)."""
        ...

    def wrap(self, data: bytes) -> bytes:
        """``data`` (one whole reply of the inner stream) as this layer sends it."""
        ...


class Framed:
    """TFramedTransport around the inner stream: frames stripped, each reply framed."""

    name = "framed"

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._head = b""  # a frame length not yet whole
        self._left = 0  # bytes of the current frame still to come

    @property
    def held(self) -> int:
        return len(self._head)

    def unwrap(self, data: bytes) -> bytes:
        out: list[bytes] = []
        view = memoryview(data)
        while view:
            if self._left:
                take = view[: self._left]
                out.append(bytes(take))
                self._left -= len(take)
                view = view[len(take) :]
                continue
            need = 4 - len(self._head)
            self._head += bytes(view[:need])
            view = view[need:]
            if len(self._head) < 4:
                break
            (length,) = _I32.unpack(self._head)
            self._head = b""
            # No size limit here: frames are passed on as they stream in, never buffered, and
            # the stream inside enforces max_frame_size (an oversized THeader call inside is
            # skipped and answered, as without the outer frame).
            if length < 0:
                raise MalformedMessage(f"negative outer frame length {length}")
            self._left = length
        return b"".join(out)

    def wrap(self, data: bytes) -> bytes:
        return frame(data)


class Zlib:
    """TZlibTransport: the inner stream is one zlib stream each way."""

    name = "zlib"

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._inflate = zlib.decompressobj()
        self._deflate = zlib.compressobj()

    @property
    def held(self) -> int:
        return 0  # what inflates goes straight to the layer inside

    def unwrap(self, data: bytes) -> bytes:
        # One read may inflate to at most max_frame_size: a small read cannot make the
        # gateway hold a huge one (a zlib bomb), and any single call must fit in that anyway.
        limit = self._limits.max_frame_size
        try:
            out = self._inflate.decompress(data, limit + 1)
        except zlib.error as exc:
            raise MalformedMessage(f"zlib stream does not inflate: {exc}") from None
        if len(out) > limit or self._inflate.unconsumed_tail:
            raise MalformedMessage(f"one read of the zlib stream inflates past {limit} bytes")
        if self._inflate.eof:
            raise MalformedMessage("the zlib stream ended (TZlibTransport never ends it)")
        return out

    def wrap(self, data: bytes) -> bytes:
        return self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)


class Json:
    """TJSONProtocol: JSON messages in, strict binary messages out to the proxy; each binary
    reply converted back to JSON."""

    name = "json"

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._splitter = JsonSplitter(limits)

    @property
    def held(self) -> int:
        return self._splitter.held

    def unwrap(self, data: bytes) -> bytes:
        return b"".join(json_to_binary(m, self._limits) for m in self._splitter.feed(data))

    def wrap(self, data: bytes) -> bytes:
        try:
            return binary_to_json(data, self._limits)
        except MalformedMessage as exc:
            # A reply JSON cannot carry (thrift's writer refused a value): the caller gets an
            # INTERNAL_ERROR with its seqid rather than no answer.
            header = read_header(data, ProtocolKind.BINARY)
            log.warning("reply to %s cannot be written as JSON: %s", header.name, exc)
            answer = application_exception(
                ProtocolKind.BINARY,
                header.name,
                header.seqid,
                INTERNAL_ERROR,
                "gateway: the reply cannot be written as TJSONProtocol",
            )
            return binary_to_json(answer, self._limits)


class BadFirstCall(MalformedMessage):
    """The first JSON call of a connection is bad but its header decoded: the connection's
    ``layers`` are known (their inner stream is strict binary, buffered) and ``error`` is to
    be answered as on any other connection."""

    def __init__(self, error: MalformedMessage, layers: list[Layer]) -> None:
        super().__init__(str(error), error.header)
        self.error = error
        self.layers = layers


def _zlib_header(first: int, second: int) -> bool:
    # CMF: deflate (8) with a window of at most 32 KiB; FCHECK makes the pair a multiple of 31;
    # no preset dictionary (TZlibTransport never uses one).
    return (
        first & 0x0F == 8
        and first >> 4 <= 7
        and (first << 8 | second) % 31 == 0
        and not (second & 0x20)
    )


Stack = tuple[list[Layer], TransportKind, ProtocolKind, bytes]
"""(layers outermost first, inner transport, inner protocol, the inner bytes of the prefix)."""

_MakeLayer = Callable[[Limits], Layer]


def _outer(prefix: bytes) -> _MakeLayer | None:
    """The layer the stream starting with ``prefix`` is wrapped in, if it is one (None: plain
    or not yet known)."""
    if not prefix:
        return None
    first = prefix[0]
    if first == 0x5B:  # "["
        return Json
    if first == 0x78 and len(prefix) >= 2 and _zlib_header(first, prefix[1]):
        return Zlib
    if len(prefix) >= 6 and prefix[0] <= 0x3F:
        if prefix[4:6] == b"[1":
            return Framed
        if prefix[4] == 0x78 and _zlib_header(prefix[4], prefix[5]):
            return Framed
        if len(prefix) >= 10 and prefix[8:10] == _HEADER_MAGIC:
            (outer,) = _I32.unpack_from(prefix, 0)
            (inner,) = _I32.unpack_from(prefix, 4)
            if outer == inner + 4:
                return Framed
    return None


def _http_method(prefix: bytes) -> bool | None:
    """True: ``prefix`` starts an HTTP request (an upper-case method and a space: only POST
    is served, the others are refused with 405); False: it does not; None: too short."""
    head = prefix[:9]
    for i, byte in enumerate(head):
        if byte == 0x20:
            return i >= 3
        if not 0x41 <= byte <= 0x5A:
            return False
    return None if len(head) < 9 else False


def _maybe_layered(prefix: bytes) -> bool:
    """``prefix``, too short for :func:`_outer` to tell, may start a layered stream: a zlib
    header's first byte, a frame whose first byte may start JSON or zlib, or THeader inside
    a frame (its magic is at byte 8)."""
    if prefix == b"\x78":
        return True
    if len(prefix) == 5 and prefix[0] <= 0x3F and prefix[4] in (0x5B, 0x78):
        return True
    if not 5 <= len(prefix) < 10 or prefix[4] != 0:  # the inner length is < 16 MiB
        return False
    if len(prefix) >= 8:
        outer: int = _I32.unpack_from(prefix, 0)[0]
        inner: int = _I32.unpack_from(prefix, 4)[0]
        return outer == inner + 4
    return True


def detect_stack(prefix: bytes, limits: Limits, depth: int = 0) -> Stack | None:
    """The layers and inner stream of a connection starting with ``prefix``.

    None: more bytes are needed. :class:`NotThrift`: no supported dialect starts like this.
    The layers returned have consumed ``prefix``; the last element is what they made of it.
    """
    if depth == 0:
        method = _http_method(prefix)
        if method is None:
            return None
        if method:
            make: _MakeLayer | None = Http
        else:
            make = _outer(prefix)
    else:
        make = _outer(prefix) if depth < _MAX_LAYERS else None
    if make is None:
        try:
            kinds = detect(prefix, header=True)
        except NotThrift:
            if depth < _MAX_LAYERS and _maybe_layered(prefix):
                return None  # too short to tell
            raise
        if kinds is None:
            return None
        return [], kinds[0], kinds[1], prefix
    layer = make(limits)
    try:
        inner = layer.unwrap(prefix)
    except HttpError:
        raise  # answered with an HTTP error status
    except MalformedMessage as exc:
        if isinstance(layer, Json) and exc.header is not None:
            raise BadFirstCall(exc, [layer]) from None
        raise NotThrift(f"{layer.name}: {exc}") from None
    if isinstance(layer, Json):
        # The proxy sees the JSON calls as strict binary messages back to back: known now,
        # however long the first message is.
        return [layer], TransportKind.BUFFERED, ProtocolKind.BINARY, inner
    try:
        found = detect_stack(inner, limits, depth + 1)
    except BadFirstCall as exc:
        exc.layers.insert(0, layer)
        raise
    if found is None:
        return None
    layers, transport, protocol, rest = found
    return [layer, *layers], transport, protocol, rest


def unwrap(layers: list[Layer], data: bytes) -> bytes:
    """``data`` from the socket through every layer, outermost first."""
    for layer in layers:
        if not data and not isinstance(layer, Http):
            return data
        data = layer.unwrap(data)
    return data


def wrap(layers: list[Layer], data: bytes) -> bytes:
    """One reply of the inner stream through every layer, innermost first."""
    for layer in reversed(layers):
        data = layer.wrap(data)
    return data
