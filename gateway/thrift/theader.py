"""THeader, the "header" transport of Apache Thrift and fbthrift: frames as functions on bytes.

A frame (Apache Thrift doc/specs/HeaderFormat.md; every integer big-endian)::

    LENGTH:i32 | MAGIC:u16 = 0x0FFF | FLAGS:u16 | SEQID:i32 | HEADER_WORDS:u16
    header, HEADER_WORDS * 4 bytes:
        PROTOCOL_ID:varint (0 binary, 2 compact) | TRANSFORMS:varint | TRANSFORM_ID:varint ...
        info blocks: INFO_ID:varint, for INFO_KEYVALUE (1) COUNT:varint then COUNT x
        (key, value), each a varint length and the bytes; INFO_ID 0 is padding and ends them
        0x00 padding to the 4-byte boundary
    payload: one Thrift message in the inner protocol, after the transforms (zlib = 1)

The payload is an ordinary binary or compact message, so everything downstream (call keys,
transcoding) sees the same bytes a framed caller sends: the dialect never reaches the key.

What a server writes back, per the reference implementations:

* SEQID and FLAGS: the request's (Apache Thrift C++ and Python keep the values they read and
  write them into the reply; fbthrift answers on the request's own header object).
* PROTOCOL_ID: the request's (all of them, Envoy's thrift_proxy too).
* transforms: Apache C++/Python reply with the server's own write transforms (none unless
  configured), Envoy with none; fbthrift echoes the request's. :func:`reply_frame` sends none
  by default, as Apache does: Apache Thrift C++ 0.17 (Debian's) corrupts its heap inflating a
  zlib reply larger than its read buffer (seen in tests/test_interop.py), and every
  implementation reads an untransformed reply whatever it sent.
* info headers: no implementation echoes the request's; a server sends its own (Envoy: the
  upstream reply's). :func:`reply_frame` sends only the headers it is given.

Unknown info blocks end the info section (the spec orders them oldest first, so every later
one is unknown too) and are skipped with the padding. An unknown transform is an error: the
payload cannot be read without it. So are more than :data:`MAX_TRANSFORMS` transforms and a
transform listed twice: undoing each one costs a pass over the payload, so a frame may cost
the reactor at most one inflation, bounded by ``max_frame_size`` (INVALID_TRANSFORM).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection, Iterable, Sequence

from thrift.Thrift import TApplicationException

from gateway.thrift.kinds import DEFAULT_LIMITS, Limits, MalformedMessage, ProtocolKind
from gateway.thrift.kinds import HeaderInfo as HeaderInfo  # re-exported: defined there
from gateway.thrift.kinds import Headers as Headers  # re-exported: defined there
from gateway.thrift.message import encode_varint
from gateway.thrift.protocols import Buffer

HEADER_MAGIC = 0x0FFF
TRANSFORM_ZLIB = 0x01
INFO_KEYVALUE = 0x01
MAX_FRAME_LENGTH = 0x3FFFFFFF  # the spec's largest LENGTH (below HTTP's magic)

_FIXED = struct.Struct(">HHiH")  # magic, flags, seqid, header length in 4-byte words
_LENGTH = struct.Struct(">i")
_U16 = struct.Struct(">H")
_WORDS_AT = 8  # offset of HEADER_WORDS in the fixed fields
_MAX_VARINT = 5  # bytes of a 32-bit varint
_U32 = struct.Struct(">I")
FIXED_SIZE = _FIXED.size  # 10: the bytes between LENGTH and the variable header

_PROTOCOLS: dict[int, ProtocolKind] = {0: ProtocolKind.BINARY, 2: ProtocolKind.COMPACT}
_PROTOCOL_IDS: dict[ProtocolKind, int] = {kind: pid for pid, kind in _PROTOCOLS.items()}
_KNOWN_TRANSFORMS = frozenset((TRANSFORM_ZLIB,))
# At most this many transforms per frame, each kind at most once (reference senders apply
# each one once; fbthrift's longest chain is a compression plus nothing else we know).
MAX_TRANSFORMS = 4


class HeaderError(MalformedMessage):
    """A THeader frame whose header cannot be used.

    ``frame`` carries the fields needed to answer (seqid, flags, protocol) when they decoded,
    with no transforms (the answer must be readable whatever failed), else None: without the
    inner protocol no ``TApplicationException`` can be written. ``code`` is the
    ``TApplicationException`` type to answer with.
    """

    def __init__(
        self,
        message: str,
        frame: HeaderInfo | None = None,
        code: int = TApplicationException.PROTOCOL_ERROR,
    ) -> None:
        super().__init__(message, None, frame)
        self.code = code


class _Cursor:
    """Reads varints and varint-prefixed strings from ``buf[pos:end]``."""

    __slots__ = ("buf", "end", "frame", "pos")

    def __init__(self, buf: Buffer | memoryview, pos: int, end: int) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end
        self.frame: HeaderInfo | None = None  # answer context, once known

    def varint(self, what: str) -> int:
        result = 0
        for shift in range(0, 35, 7):
            if self.pos >= self.end:
                raise HeaderError(f"THeader header ends inside the {what}", self.frame)
            byte = self.buf[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if result > 0xFFFFFFFF:
                    break
                return result
        raise HeaderError(f"bad varint for the THeader {what}", self.frame)

    def string(self, what: str) -> bytes:
        size = self.varint(f"{what} length")
        start = self.pos
        if size > self.end - start:
            raise HeaderError(f"THeader {what} of {size} bytes runs past the header", self.frame)
        self.pos = start + size
        return bytes(self.buf[start : self.pos])


def parse_frame(
    frame: Buffer | memoryview, limits: Limits = DEFAULT_LIMITS
) -> tuple[bytes, HeaderInfo]:
    """``(payload, info)`` of one THeader frame: ``frame`` is everything after LENGTH.

    The payload comes back with the transforms undone, its inflated size bounded by
    ``limits.max_frame_size``. Every failure is a :class:`HeaderError`.
    """
    info, start = parse_frame_header(frame, len(frame), limits)
    payload = bytes(frame[start:])
    if info.transforms:
        context = HeaderInfo(info.seqid, info.flags, info.protocol)
        for _ in info.transforms:  # undone last to first; all are zlib, the only known one
            payload = _inflate(payload, limits.max_frame_size, context)
    return payload, info


def header_bytes_needed(fixed: Buffer | memoryview, limits: Limits = DEFAULT_LIMITS) -> int:
    """How many bytes of a frame (after LENGTH) :func:`parse_frame_header` needs, given its
    first ``FIXED_SIZE`` bytes: the fixed fields and the variable header; of a header over
    ``limits.max_header_size`` only the protocol id (it is refused, and answered, at once)."""
    words: int = _U16.unpack_from(fixed, _WORDS_AT)[0]
    if words * 4 > limits.max_header_size:
        return FIXED_SIZE + _MAX_VARINT
    return FIXED_SIZE + words * 4


def parse_frame_header(
    frame: Buffer | memoryview, length: int, limits: Limits = DEFAULT_LIMITS
) -> tuple[HeaderInfo, int]:
    """``(info, payload offset)`` of a THeader frame of ``length`` bytes (after LENGTH) whose
    first bytes are ``frame``: at least :func:`header_bytes_needed` of them (a frame being
    skipped is not buffered whole). Every failure is a :class:`HeaderError`."""
    if length < FIXED_SIZE or len(frame) < FIXED_SIZE:
        raise HeaderError(f"THeader frame of {length} bytes is shorter than its fixed fields")
    magic, flags, seqid, words = _FIXED.unpack_from(frame, 0)
    if magic != HEADER_MAGIC:
        raise HeaderError(f"no THeader magic (0x{magic:04x}) at the start of a frame")
    header_size = words * 4
    end = FIXED_SIZE + header_size
    # The protocol id comes first and is read even when the header length is wrong: with it
    # (and the seqid) the caller can still be answered in its own protocol.
    cursor = _Cursor(frame, FIXED_SIZE, min(end, len(frame)))
    protocol_id = cursor.varint("protocol id")
    protocol = _PROTOCOLS.get(protocol_id)
    if protocol is None:
        raise HeaderError(
            f"THeader protocol id {protocol_id} is not supported (binary 0, compact 2)",
            code=TApplicationException.INVALID_PROTOCOL,
        )
    cursor.frame = context = HeaderInfo(seqid, flags, protocol)
    if header_size > limits.max_header_size:
        raise HeaderError(
            f"THeader header of {header_size} bytes exceeds max_header_size "
            f"{limits.max_header_size}",
            context,
        )
    if end > length:
        raise HeaderError(
            f"THeader header of {header_size} bytes runs past the {length}-byte frame",
            context,
        )
    transforms: list[int] = []
    count = cursor.varint("transform count")
    if count > MAX_TRANSFORMS:
        raise HeaderError(
            f"THeader frame lists {count} transforms, more than {MAX_TRANSFORMS}",
            context,
            TApplicationException.INVALID_TRANSFORM,
        )
    for _ in range(count):
        transform = cursor.varint("transform id")
        if transform not in _KNOWN_TRANSFORMS:
            raise HeaderError(
                f"unknown THeader transform {transform}",
                context,
                TApplicationException.INVALID_TRANSFORM,
            )
        if transform in transforms:
            # Each undone transform costs the reactor a full pass over the payload: listed
            # N times, one frame cost N passes (issue 16: 20,000 x zlib stalled every client).
            raise HeaderError(
                f"THeader transform {transform} listed more than once",
                context,
                TApplicationException.INVALID_TRANSFORM,
            )
        transforms.append(transform)
    headers: list[tuple[bytes, bytes]] = []
    while cursor.pos < end:
        if cursor.varint("info id") != INFO_KEYVALUE:
            break  # 0 is padding; any other id is unknown, and so is every later one
        for _ in range(cursor.varint("info header count")):
            key = cursor.string("info header key")
            headers.append((key, cursor.string("info header value")))
    return HeaderInfo(seqid, flags, protocol, tuple(transforms), tuple(headers)), end


def inflate_prefix(data: bytes, transforms: int, size: int, context: HeaderInfo) -> bytes:
    """At most ``size`` bytes of the start of a payload ``transforms`` times zlib-compressed,
    of which ``data`` is the start: enough to read the message header of a frame too large to
    buffer. Shorter when ``data`` does not hold that much yet; :class:`HeaderError` when it
    does not inflate."""
    for _ in range(transforms):
        try:
            data = zlib.decompressobj().decompress(data, size)
        except zlib.error as exc:
            raise HeaderError(f"THeader zlib payload does not inflate: {exc}", context) from None
    return data


def _inflate(data: bytes, limit: int, context: HeaderInfo) -> bytes:
    inflater = zlib.decompressobj()
    try:
        # Never more than limit + 1 bytes: a small frame cannot make us allocate a huge one.
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise HeaderError(f"THeader zlib payload does not inflate: {exc}", context) from None
    if len(out) > limit:
        raise HeaderError(f"THeader payload inflates past max_frame_size {limit}", context)
    if not inflater.eof or inflater.unused_data:
        raise HeaderError("THeader zlib payload is truncated or followed by junk", context)
    return out


def _string(value: bytes) -> bytes:
    return encode_varint(len(value)) + value


def encode_frame(
    payload: bytes,
    *,
    seqid: int,
    protocol: ProtocolKind,
    flags: int = 0,
    transforms: Sequence[int] = (),
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> bytes:
    """A whole THeader frame (LENGTH included) carrying ``payload``, a ``protocol`` message.

    Transforms are applied in order; info headers are written as one INFO_KEYVALUE block.
    ValueError for an unknown or repeated transform, a protocol THeader cannot name, out-of-range
    seqid/flags, or a header or frame larger than the format allows.
    """
    protocol_id = _PROTOCOL_IDS.get(protocol)
    if protocol_id is None:
        raise ValueError(f"THeader carries binary or compact messages, not {protocol}")
    if not -0x80000000 <= seqid <= 0x7FFFFFFF or not 0 <= flags <= 0xFFFF:
        raise ValueError(f"seqid {seqid} / flags {flags} out of range for THeader")
    header = bytearray(encode_varint(protocol_id))
    header += encode_varint(len(transforms))
    if len(set(transforms)) != len(transforms):
        raise ValueError("a THeader transform may be listed only once")
    for transform in transforms:
        if transform not in _KNOWN_TRANSFORMS:
            raise ValueError(f"unknown THeader transform {transform}")
        header += encode_varint(transform)
        payload = zlib.compress(payload)
    pairs = list(headers)
    if pairs:
        header += encode_varint(INFO_KEYVALUE)
        header += encode_varint(len(pairs))
        for key, value in pairs:
            header += _string(key)
            header += _string(value)
    header += bytes(-len(header) % 4)
    if len(header) // 4 > 0xFFFF:
        raise ValueError(f"THeader header of {len(header)} bytes is too large")
    length = FIXED_SIZE + len(header) + len(payload)
    if length > MAX_FRAME_LENGTH:
        raise ValueError(f"THeader frame of {length} bytes is too large")
    return b"".join(
        (
            _LENGTH.pack(length),
            _FIXED.pack(HEADER_MAGIC, flags, seqid, len(header) // 4),
            header,
            payload,
        )
    )


def reply_frame(
    message: bytes,
    request: HeaderInfo,
    *,
    headers: Iterable[tuple[bytes, bytes]] = (),
    transforms: Sequence[int] = (),
) -> bytes:
    """The THeader frame answering ``request`` with ``message`` (a reply in its protocol).

    Echoes the request's seqid, flags and protocol; applies only the ``transforms`` given
    (none by default, whatever the request used: see the module docstring) and carries only
    the info ``headers`` given, never the request's.
    """
    return encode_frame(
        message,
        seqid=request.seqid,
        protocol=request.protocol,
        flags=request.flags,
        transforms=transforms,
        headers=headers,
    )


def key_headers(info: HeaderInfo | None, names: Collection[bytes]) -> bytes:
    """Canonical bytes of the info headers ``names`` of a call, to fold into its call key.

    Names sorted; each is ``len:u32 name`` then ``0x00`` if absent or ``0x01 len:u32 value``,
    so an absent header and an empty one differ. Empty bytes when the call carries none of
    ``names`` (a caller without THeader, ``info`` None, carries none): such a call keeps
    exactly the key a framed caller gets, with or without key headers configured.
    """
    if info is None or not any(info.get(name) is not None for name in names):
        return b""
    out = bytearray()
    for name in sorted(names):
        out += _U32.pack(len(name)) + name
        value = info.get(name)
        if value is None:
            out.append(0)
        else:
            out.append(1)
            out += _U32.pack(len(value)) + value
    return bytes(out)
