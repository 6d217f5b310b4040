"""Transports: splitting a byte stream into whole messages, and framing messages to send."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from thrift.Thrift import TApplicationException

from gateway.thrift.kinds import (
    DEFAULT_LIMITS,
    FrameTooLarge,
    Limits,
    MalformedMessage,
    ProtocolKind,
    TransportKind,
    WireError,
)
from gateway.thrift.message import MessageHeader, parse_header, read_header
from gateway.thrift.protocols import Buffer, Truncated
from gateway.thrift.skipper import BodySkipper
from gateway.thrift.theader import (
    FIXED_SIZE,
    HeaderError,
    HeaderInfo,
    header_bytes_needed,
    inflate_prefix,
    parse_frame,
    parse_frame_header,
    reply_frame,
)
from gateway.thrift.walk import BodyErrors

_I32 = struct.Struct(">i")

# Enum members as globals on the per-message path (see gateway.thrift.message for why).
_FRAMED = TransportKind.FRAMED
_HEADER = TransportKind.HEADER

# One message as split from a stream: its bytes (a THeader frame's payload, untransformed),
# its header, and the THeader frame fields (None on framed and buffered connections).
Frame = tuple[bytes, MessageHeader, HeaderInfo | None]

# The longest message name accepted in the header of a frame that is being skipped: the header
# is the only part of such a frame that is ever buffered.
_MAX_SKIPPED_NAME = 64 * 1024
# A skipped THeader frame's payload is compressed: its message header is inflated from the
# payload's first bytes, and this many compressed bytes must yield it (zlib can pad a stream
# with blocks that inflate to nothing; the bound keeps such a frame from being buffered).
_MAX_COMPRESSED_HEADER = 2 * _MAX_SKIPPED_NAME + 1024


def frame(message: bytes) -> bytes:
    """``message`` behind its 4-byte big-endian length (TFramedTransport)."""
    return _I32.pack(len(message)) + message


def encode(transport: TransportKind, message: bytes, request: HeaderInfo | None = None) -> bytes:
    """``message`` as it goes on a ``transport`` connection: framed, as is, or in a THeader
    frame answering ``request`` (:func:`gateway.thrift.theader.reply_frame`).

    ``request`` is the frame the message answers, as :meth:`MessageReader.feed_frames`
    returned it; a THeader connection needs it (ValueError without).
    """
    if request is not None:
        return reply_frame(message, request)
    if transport is _HEADER:
        raise ValueError("a THeader reply needs the request's HeaderInfo")
    return frame(message) if transport is _FRAMED else message


@dataclass(frozen=True, slots=True)
class SkippedFrame:
    """A frame over ``max_frame_size`` that a ``skip_oversized`` reader discarded.

    ``header`` was decoded from the frame's first bytes (so its seqid says whose it was);
    ``size`` is the frame's announced length, without the 4-byte prefix; ``frame`` the
    THeader frame fields (transforms and info headers included) on THeader streams, whose
    answer must echo them, else None.
    """

    header: MessageHeader
    size: int
    frame: HeaderInfo | None = None


class MessageReader:
    """Incremental splitter of one connection direction into whole, unframed messages.

    *Framed*: the length prefix is checked against ``max_frame_size`` (:class:`FrameTooLarge`)
    and for sign (:class:`MalformedMessage`) as soon as its 4 bytes arrive, before the frame
    is buffered. Of a whole frame only the header is decoded (a frame that has none is
    :class:`MalformedMessage`); the body is validated lazily by whoever decodes it
    (:func:`call_identity`, :func:`transcode`, ...), which costs nothing for calls passed through.

    *Buffered*: a message ends where its body struct ends, so the message is skipped
    generically (with the depth/collection/string limits). When the bytes run out the reader
    waits; the walker reports a lower bound on the bytes still needed (pending reads plus the
    remaining container elements at their smallest encoding) and the pending message is only
    re-walked, from its start, once that much is buffered. Large strings and collections of
    fixed-size values are therefore re-walked about once, but a huge message made of many
    small structs arriving in small chunks costs O(size^2 / chunk) in the worst case. The
    pending message may not exceed ``max_frame_size`` (:class:`FrameTooLarge`). A bad body
    raises :class:`MalformedMessage` with ``header`` set: the stream cannot be resynchronised.

    *Header* (THeader): frames are checked like framed ones, then each frame's header is
    decoded (:func:`gateway.thrift.theader.parse_frame`, transforms undone) and the payload
    is one message of ``protocol``, split and checked as a framed message is. Frames must
    all carry ``protocol`` (clients keep one per connection). Bad header fields raise
    :class:`~gateway.thrift.theader.HeaderError`; an unreadable payload header a
    :class:`MalformedMessage`; both carry the frame fields (``frame``) when they decoded, so
    the caller can be answered (``gateway.thrift.answers.error_answer``). Use
    :meth:`feed_frames` to get the frame fields each reply must echo.

    *Skipping* (``skip_oversized=True``, framed and THeader): a frame over ``max_frame_size``
    is not an error. Its header is decoded from its first bytes (only they are buffered; a
    frame without a readable header is :class:`MalformedMessage`), the rest is discarded as
    it streams in, and the frame is reported as a :class:`SkippedFrame` by
    :meth:`take_skipped`, so the connection keeps going and only that one message's call
    fails. A THeader frame's own header is read first (bad fields are a ``HeaderError`` as
    usual), then the message header from the payload's first bytes, inflated from at most
    ``_MAX_COMPRESSED_HEADER`` bytes when the payload is zlib-compressed. Unframed streams
    cannot skip a message without parsing it: there :class:`FrameTooLarge` stays final (with
    ``header`` set when it decoded).

    Errors are final: the reader keeps raising the same error. Messages that were complete
    before the error in the same :meth:`feed` are on the error's ``complete`` list (and,
    with their headers and frame fields, on ``frames`` when fed by :meth:`feed_frames`).
    """

    def __init__(
        self,
        transport: TransportKind,
        protocol: ProtocolKind,
        limits: Limits = DEFAULT_LIMITS,
        *,
        skip_oversized: bool = False,
    ) -> None:
        self.transport = transport
        self.protocol = protocol
        self.limits = limits
        self._buf = bytearray()  # bytes of the messages not yet complete
        self._need = 0  # len(self._buf) below which parsing cannot progress
        self._error: WireError | None = None
        self._skip_oversized = skip_oversized and transport is not TransportKind.BUFFERED
        self._skipping = 0  # bytes of a skipped frame still to discard (never buffered)
        # Buffered streams: the message cut short at the start of the buffer, and where its
        # body's skipper stopped (resumed when more bytes come: O(size), not O(size^2)).
        self._pending_body: tuple[MessageHeader, BodySkipper] | None = None
        self.skipped: list[SkippedFrame] = []  # frames skipped, in order, until taken

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a message."""
        return len(self._buf)

    @property
    def partial(self) -> int | None:
        """None between messages; inside one (some of its bytes arrived, not all), how many
        of them are buffered: 0 while an oversized frame being skipped streams in."""
        if self._buf:
            return len(self._buf)
        return 0 if self._skipping else None

    def take_skipped(self) -> list[SkippedFrame]:
        """The frames skipped since the last call (see ``skip_oversized``), in stream order."""
        skipped, self.skipped = self.skipped, []
        return skipped

    def feed(self, data: bytes) -> list[bytes]:
        """The messages completed by ``data``, in order (possibly none)."""
        return self._feed(data, [], [], [])

    def feed_parsed(self, data: bytes) -> list[tuple[bytes, MessageHeader]]:
        """Like :meth:`feed`, each message with its header (``read_header``'s result).

        Splitting decodes every header anyway; the proxy takes it from here instead of
        decoding it again. Errors are raised as by :meth:`feed` (``complete`` holds bytes).
        """
        headers: list[MessageHeader] = []
        messages = self._feed(data, [], headers, [])
        return list(zip(messages, headers, strict=True))

    def feed_frames(self, data: bytes) -> list[Frame]:
        """Like :meth:`feed_parsed`, each message also with its THeader frame fields.

        The fields are None on framed and buffered connections; on THeader connections they
        are what the reply must echo (pass them to :func:`encode`). Errors carry the
        messages completed before them on ``frames`` too.
        """
        headers: list[MessageHeader] = []
        infos: list[HeaderInfo | None] = []
        try:
            messages = self._feed(data, [], headers, infos)
        except WireError as exc:
            if not infos:
                infos = [None] * len(exc.complete)
            exc.frames = list(zip(exc.complete, headers, infos, strict=True))
            raise
        if not infos:  # framed or buffered
            infos = [None] * len(messages)
        return list(zip(messages, headers, infos, strict=True))

    def _feed(
        self,
        data: bytes,
        messages: list[bytes],
        headers: list[MessageHeader],
        infos: list[HeaderInfo | None],
    ) -> list[bytes]:
        if self._error is not None:
            raise self._error
        if self._skipping:
            # The rest of a skipped frame: dropped as it arrives (self._buf is empty here).
            dropped = min(self._skipping, len(data))
            self._skipping -= dropped
            if dropped == len(data):
                return messages
            data = data[dropped:]
        buf: Buffer
        if self._buf:
            self._buf += data
            buf = self._buf
            if len(buf) < self._need:
                return messages
        else:
            buf = data  # the common case: parse the caller's bytes without copying them
        try:
            if self.transport is _FRAMED:
                pos, need = self._split_framed(buf, messages, headers)
            elif self.transport is _HEADER:
                pos, need = self._split_header(buf, messages, headers, infos)
            else:
                pos, need = self._split_buffered(buf, messages, headers)
        except WireError as exc:
            exc.complete = messages
            self._error = exc
            self._buf = bytearray()
            raise
        if buf is self._buf:
            del self._buf[:pos]
        elif pos < len(buf):
            self._buf = bytearray(memoryview(buf)[pos:])
        self._need = need - pos
        return messages

    def _split_framed(
        self, buf: Buffer, messages: list[bytes], headers: list[MessageHeader]
    ) -> tuple[int, int]:
        """Cut whole frames from ``buf``; returns (bytes consumed, buffer length needed next)."""
        protocol = self.protocol

        def take(frame: memoryview) -> None:
            message = bytes(frame)
            # A frame must at least carry a header.
            headers.append(read_header(message, protocol))
            messages.append(message)

        return self._split_frames(buf, self._skip_frame, take)

    def _split_header(
        self,
        buf: Buffer,
        messages: list[bytes],
        headers: list[MessageHeader],
        infos: list[HeaderInfo | None],
    ) -> tuple[int, int]:
        """Cut whole THeader frames from ``buf`` and unwrap them; like :meth:`_split_framed`."""
        protocol = self.protocol
        limits = self.limits

        def take(frame: memoryview) -> None:
            payload, info = parse_frame(frame, limits)
            if info.protocol is not protocol:
                raise HeaderError(
                    f"THeader frame in {info.protocol} on a {protocol} connection",
                    HeaderInfo(info.seqid, info.flags, info.protocol),
                    TApplicationException.INVALID_PROTOCOL,
                )
            try:
                header = read_header(payload, protocol)
            except MalformedMessage as exc:
                exc.frame = HeaderInfo(info.seqid, info.flags, info.protocol)
                raise
            headers.append(header)
            messages.append(payload)
            infos.append(info)

        return self._split_frames(buf, self._skip_header_frame, take)

    def _split_frames(
        self,
        buf: Buffer,
        skip: Callable[[Buffer, int, int], int],
        take: Callable[[memoryview], None],
    ) -> tuple[int, int]:
        """Hand each whole 4-byte-length frame in ``buf`` to ``take`` (oversized ones go to
        ``skip`` or raise); returns (bytes consumed, buffer length needed next)."""
        pos = 0
        end = len(buf)
        max_frame_size = self.limits.max_frame_size
        while end - pos >= 4:
            (length,) = _I32.unpack_from(buf, pos)
            if length < 0:
                raise MalformedMessage(f"negative frame length {length}")
            if length > max_frame_size:
                if not self._skip_oversized:
                    raise FrameTooLarge(
                        f"frame of {length} bytes exceeds max_frame_size {max_frame_size}"
                    )
                try:
                    skipped_to = skip(buf, pos, length)
                except Truncated as exc:  # its header has not arrived whole yet
                    return pos, exc.need
                if skipped_to > end:  # the rest of it streams in later: drop it then
                    self._skipping = skipped_to - end
                    return end, end
                pos = skipped_to
                continue
            stop = pos + 4 + length
            if stop > end:
                return pos, stop
            take(memoryview(buf)[pos + 4 : stop])
            pos = stop
        return pos, pos + 4

    def _skip_frame(self, buf: Buffer, pos: int, length: int) -> int:
        """Record the oversized frame at ``pos`` as skipped; return where it ends (possibly
        beyond ``buf``). :class:`Truncated` while its header is incomplete."""
        start = pos + 4
        max_name = min(self.limits.max_string_size, _MAX_SKIPPED_NAME)
        try:
            header = parse_header(buf, start, self.protocol, max_name)
        except Truncated as exc:
            if exc.need > start + length:
                raise MalformedMessage("frame ends inside its message header") from None
            raise
        if header.body_offset > length:
            raise MalformedMessage("frame ends inside its message header")
        self.skipped.append(SkippedFrame(header, length))
        return start + length

    def _skip_header_frame(self, buf: Buffer, pos: int, length: int) -> int:
        """Like :meth:`_skip_frame`, for the THeader frame at ``pos``: its frame header, then
        its message header (inflated from the payload's first bytes if compressed)."""
        start = pos + 4
        end = len(buf)
        if end - start < FIXED_SIZE:
            raise Truncated(start + FIXED_SIZE)
        need = start + header_bytes_needed(memoryview(buf)[start : start + FIXED_SIZE], self.limits)
        if end < need:
            raise Truncated(need)
        info, offset = parse_frame_header(memoryview(buf)[start:need], length, self.limits)
        context = HeaderInfo(info.seqid, info.flags, info.protocol)
        if info.protocol is not self.protocol:
            raise HeaderError(
                f"THeader frame in {info.protocol} on a {self.protocol} connection",
                context,
                TApplicationException.INVALID_PROTOCOL,
            )
        payload, stop = start + offset, start + length
        max_name = min(self.limits.max_string_size, _MAX_SKIPPED_NAME)
        try:
            if info.transforms:
                available = bytes(memoryview(buf)[payload : min(end, stop)])
                if len(available) > _MAX_COMPRESSED_HEADER:
                    available = available[:_MAX_COMPRESSED_HEADER]
                plain = inflate_prefix(available, len(info.transforms), max_name + 32, context)
                try:
                    header = parse_header(plain, 0, self.protocol, max_name)
                except Truncated:
                    if min(end, stop) - payload >= _MAX_COMPRESSED_HEADER:
                        raise MalformedMessage(
                            f"no message header in the first {_MAX_COMPRESSED_HEADER} bytes "
                            "of a compressed THeader payload"
                        ) from None
                    raise Truncated(min(end, stop) + 1) from None
            else:
                header = parse_header(buf, payload, self.protocol, max_name)
                if payload + header.body_offset > stop:
                    raise Truncated(stop + 1)
        except Truncated as exc:
            if exc.need > stop:
                raise MalformedMessage(
                    "frame ends inside its message header", frame=context
                ) from None
            raise
        except MalformedMessage as exc:
            exc.frame = context
            raise
        self.skipped.append(SkippedFrame(header, length, info))
        return stop

    def _split_buffered(
        self, buf: Buffer, messages: list[bytes], headers: list[MessageHeader]
    ) -> tuple[int, int]:
        """Cut whole messages from ``buf``; returns (bytes consumed, buffer length needed next)."""
        pos = 0
        end = len(buf)
        limits = self.limits
        while pos < end:
            pending = self._pending_body
            if pending is not None and pos == 0:
                # The message cut short last time: resume its body where the skipper stopped
                # (the buffer still starts with it), instead of walking it again.
                header, skipper = pending
            else:
                try:
                    header = parse_header(buf, pos, self.protocol, limits.max_string_size)
                except Truncated as exc:  # any other error is a MalformedMessage without header
                    return _await_more(pos, exc.need, limits)
                skipper = BodySkipper(self.protocol, pos + header.body_offset, limits)
            self._pending_body = None
            with BodyErrors(header):
                try:
                    stop = skipper.skip(buf)
                except Truncated as exc:  # not malformed: the rest has yet to arrive
                    result = _await_more(pos, exc.need, limits, header)
                    if pos:  # the skipper's positions are relative to the buffer start
                        skipper.rebase(pos)
                    self._pending_body = (header, skipper)
                    return result
            if stop - pos > limits.max_frame_size:
                raise FrameTooLarge(
                    f"unframed message exceeds max_frame_size {limits.max_frame_size}", header
                )
            if pos == 0 and stop == end and isinstance(buf, bytes):
                messages.append(buf)  # exactly one whole message: hand the caller's bytes back
            else:
                messages.append(bytes(memoryview(buf)[pos:stop]))
            # body_offset is relative to the message start, so it holds for the cut message.
            headers.append(header)
            pos = stop
        return pos, pos + 1


def _await_more(
    pos: int, need: int, limits: Limits, header: MessageHeader | None = None
) -> tuple[int, int]:
    """``_split_buffered``'s result when the message at ``pos`` needs ``need`` bytes."""
    if need - pos > limits.max_frame_size:
        raise FrameTooLarge(
            f"unframed message exceeds max_frame_size {limits.max_frame_size}", header
        ) from None
    return pos, need
