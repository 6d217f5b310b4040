"""Recognising the transport and protocol of a client connection from its first bytes.

What the first bytes can be, and why the cases cannot be confused:

* ``80 01 00 tt``: buffered strict binary (version word; tt = message type 1..4);
* ``82 xx``: buffered compact (protocol id; xx = type << 5 | version 1);
* ``LL LL LL LL 80 01 ..`` / ``LL LL LL LL 82 ..``: framed strict binary / framed compact.
  A frame length cannot start with 0x80/0x82 (it would be >= 2 GiB, negative as an i32);
* ``LL LL LL LL 00 NN NN NN name..`` : framed old non-strict binary (the name length's high
  byte is 0 because names are short);
* ``NN NN NN NN name.. tt``: buffered old non-strict binary; byte 4 is the first character of
  the name, printable and never 0x00/0x80/0x82, which is what separates it from a frame;
* ``LL LL LL LL 0F FF ff ff SS SS SS SS WW WW pp``: a THeader frame (magic 0x0FFF; pp is the
  first byte of the protocol id varint: 0 binary, 2 compact). 0x0F is neither a message
  marker nor a printable name character, so nothing above starts like this.

Old non-strict binary has no magic number, so it is accepted only when it looks plausible:
a name length of 1.._MAX_NAME bytes, name bytes printable ASCII, a message type 1..4 after
it (and, framed, a frame long enough to hold that header). That is a heuristic: other data
shaped like that is taken for Thrift, and a non-strict method name with non-ASCII characters
or longer than _MAX_NAME is refused. HTTP, TLS, SSH, Redis and the like all fail it (their
first byte is > 0x3F, or the "name length" is absurd). JSON and other Thrift protocols are
reported as NotThrift, and so is THeader unless the caller accepts it (``header=True``).
"""

from __future__ import annotations

import struct

from gateway.thrift.kinds import NotThrift, ProtocolKind, TransportKind
from gateway.thrift.theader import FIXED_SIZE, HEADER_MAGIC

_MAX_NAME = 4096  # longest (possibly "Service:method") name accepted for non-strict binary
_MAX_FRAME = 0x3FFFFFFF  # no Thrift implementation frames more (THeader's 30-bit length)
_I32 = struct.Struct(">i")
_MESSAGE_TYPES = range(1, 5)
_HEADER_MAGIC = bytes((HEADER_MAGIC >> 8, HEADER_MAGIC & 0xFF))
_HEADER_PROTOCOLS = {0: ProtocolKind.BINARY, 2: ProtocolKind.COMPACT}
_HEADER_PROTOCOL_AT = 4 + FIXED_SIZE  # the protocol id follows LENGTH and the fixed fields

MAX_DETECT_PREFIX = 4 + 4 + _MAX_NAME + 1  # detect() decides with at most this many bytes

Detected = tuple[TransportKind, ProtocolKind]


def _strict(prefix: bytes, off: int, transport: TransportKind) -> Detected | None:
    if len(prefix) > off + 1 and prefix[off + 1] != 0x01:
        raise NotThrift("bad strict binary version")
    if len(prefix) < off + 4:
        return None
    if prefix[off + 3] not in _MESSAGE_TYPES:
        raise NotThrift("bad strict binary message type")
    return transport, ProtocolKind.BINARY


def _compact(prefix: bytes, off: int, transport: TransportKind) -> Detected | None:
    if len(prefix) < off + 2:
        return None
    version_type = prefix[off + 1]
    if version_type & 0x1F != 1 or version_type >> 5 not in _MESSAGE_TYPES:
        raise NotThrift("bad compact version or message type")
    return transport, ProtocolKind.COMPACT


def _nonstrict(prefix: bytes, off: int, transport: TransportKind, room: int) -> Detected | None:
    """Old binary header at ``off``; ``room`` is how many bytes the message can have."""
    if len(prefix) < off + 4:
        return None
    (size,) = _I32.unpack_from(prefix, off)
    if not 1 <= size <= _MAX_NAME or off + 4 + size + 5 > room:
        raise NotThrift("implausible message name length")
    name = prefix[off + 4 : off + 4 + size]
    if any(not 0x21 <= byte <= 0x7E for byte in name):
        raise NotThrift("message name is not printable ASCII")
    if len(prefix) <= off + 4 + size:
        return None
    if prefix[off + 4 + size] not in _MESSAGE_TYPES:
        raise NotThrift("bad old binary message type")
    return transport, ProtocolKind.BINARY_NONSTRICT


def _header(prefix: bytes, length: int, accept: bool) -> Detected | None:
    """A THeader frame: (HEADER, the protocol of its payload)."""
    if not accept:
        raise NotThrift("THeader transport is not enabled")
    if length < FIXED_SIZE + 4:  # the variable header holds at least one 4-byte word
        raise NotThrift(f"implausible THeader frame length {length}")
    if len(prefix) <= _HEADER_PROTOCOL_AT:
        return None
    protocol = _HEADER_PROTOCOLS.get(prefix[_HEADER_PROTOCOL_AT])
    if protocol is None:
        raise NotThrift(f"unsupported THeader protocol id byte 0x{prefix[_HEADER_PROTOCOL_AT]:02x}")
    return TransportKind.HEADER, protocol


def detect(prefix: bytes, *, header: bool = False) -> Detected | None:
    """(transport, protocol) of a connection starting with ``prefix``.

    None: more bytes are needed (never once ``len(prefix) >= MAX_DETECT_PREFIX``).
    :class:`NotThrift`: no supported transport/protocol starts like this. THeader is
    recognised only with ``header=True``; its protocol is the first frame's (a THeader
    connection keeps one protocol: :class:`MessageReader` refuses frames in another).
    """
    if not prefix:
        return None
    first = prefix[0]
    if first == 0x80:
        return _strict(prefix, 0, TransportKind.BUFFERED)
    if first == 0x82:
        return _compact(prefix, 0, TransportKind.BUFFERED)
    # Both remaining shapes start with a small non-negative i32 (frame or name length).
    if first > _MAX_FRAME >> 24:
        raise NotThrift(f"first byte 0x{first:02x} starts no Thrift message")
    if len(prefix) < 5:
        return None
    (length,) = _I32.unpack_from(prefix, 0)
    marker = prefix[4]
    if marker == _HEADER_MAGIC[0]:
        if len(prefix) < 6:
            return None
        if prefix[5] == _HEADER_MAGIC[1]:
            return _header(prefix, length, header)
    if marker in (0x80, 0x82, 0x00):
        if length < 5:  # the smallest message: compact, 1-byte seqid, empty name, STOP
            raise NotThrift(f"implausible frame length {length}")
        if marker == 0x80:
            return _strict(prefix, 4, TransportKind.FRAMED)
        if marker == 0x82:
            return _compact(prefix, 4, TransportKind.FRAMED)
        return _nonstrict(prefix, 4, TransportKind.FRAMED, 4 + length)
    return _nonstrict(prefix, 0, TransportKind.BUFFERED, 1 << 62)
