"""Vocabulary of the wire layer: protocol/transport kinds, message types, message and THeader
frame headers, limits and errors."""

from __future__ import annotations

import enum
from dataclasses import dataclass

_MULTIPLEX_SEPARATOR = ":"  # TMultiplexedProtocol.SEPARATOR


class ProtocolKind(enum.StrEnum):
    """How messages are encoded."""

    BINARY = "binary"  # TBinaryProtocol, strict header (version word 0x8001)
    BINARY_NONSTRICT = "binary-nonstrict"  # TBinaryProtocol(strictWrite=False): old header
    COMPACT = "compact"  # TCompactProtocol (protocol id 0x82)


class TransportKind(enum.StrEnum):
    """How messages are delimited on a connection."""

    FRAMED = "framed"  # 4-byte big-endian length, then the message
    BUFFERED = "buffered"  # messages back to back; boundaries found by parsing
    HEADER = "header"  # THeader frames (gateway.thrift.theader): length, magic 0x0FFF, headers


class ReplyKind(enum.Enum):
    """What a backend reply message carries, which decides whether it may be cached."""

    SUCCESS = "success"  # REPLY whose result struct holds field 0 (or nothing: void)
    DECLARED_EXCEPTION = "declared"  # REPLY whose result struct holds a declared exception
    APPLICATION_EXCEPTION = "app"  # EXCEPTION message (TApplicationException) from the backend


class MessageType(enum.IntEnum):
    """Thrift message types (thrift.Thrift.TMessageType)."""

    CALL = 1
    REPLY = 2
    EXCEPTION = 3
    ONEWAY = 4


_MAX_SANE_DEPTH = 512  # the walker recurses once or twice per level; stay far below Python's limit


@dataclass(frozen=True)
class Limits:
    """Bounds applied to untrusted bytes; exceeding any of them is an error, never a hang.

    ``max_string_size`` 0 (the default) means "same as ``max_frame_size``".
    ``max_frame_size`` also bounds a THeader payload once decompressed (zlib bombs).
    """

    max_frame_size: int = 16 * 1024 * 1024  # whole message, framed or not
    max_depth: int = 64  # nesting of structs and containers; the message body struct is 1
    max_collection_size: int = 1_000_000  # elements per list/set, entries per map
    max_string_size: int = 0  # bytes per string/binary value (0: max_frame_size)
    # Bytes of a THeader frame's variable header (protocol id, transforms, info headers).
    # 64 KiB is what Apache Thrift C++ and Envoy accept.
    max_header_size: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.max_string_size == 0:
            object.__setattr__(self, "max_string_size", self.max_frame_size)
        for name in (
            "max_frame_size",
            "max_depth",
            "max_collection_size",
            "max_string_size",
            "max_header_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive")
        if self.max_depth > _MAX_SANE_DEPTH:
            raise ValueError(f"Limits.max_depth must be at most {_MAX_SANE_DEPTH}")


DEFAULT_LIMITS = Limits()


# The headers travel in the errors below, hence defined here (message.py and theader.py
# parse them and re-export these names).
class MessageHeader:
    """A decoded message header; ``body_offset`` is where the args/result struct starts.

    Treat it as immutable. A plain slotted class rather than a frozen dataclass: two are
    built per proxied call (the call's and the reply's), and a frozen dataclass's
    ``__init__`` costs several times as much.
    """

    __slots__ = ("body_offset", "name", "seqid", "type")

    def __init__(self, name: str, type: MessageType, seqid: int, body_offset: int) -> None:
        self.name = name
        self.type = type
        self.seqid = seqid
        self.body_offset = body_offset

    def _fields(self) -> tuple[str, MessageType, int, int]:
        return (self.name, self.type, self.seqid, self.body_offset)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MessageHeader):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"MessageHeader(name={self.name!r}, type={self.type!r}, seqid={self.seqid!r}, "
            f"body_offset={self.body_offset!r})"
        )

    @property
    def service(self) -> str | None:
        """The service of a multiplexed "Svc:method" name ("Svc"), else None."""
        service, sep, _ = self.name.partition(_MULTIPLEX_SEPARATOR)
        return service if sep else None

    @property
    def method(self) -> str:
        """The bare method name (TMultiplexedProcessor splits at the first separator too)."""
        _, sep, method = self.name.partition(_MULTIPLEX_SEPARATOR)
        return method if sep else self.name


Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class HeaderInfo:
    """The fields of one THeader frame besides its payload.

    ``transforms`` are in frame order (the sender applied them in that order);
    ``headers`` are the INFO_KEYVALUE pairs in frame order, bytes exactly as sent.
    """

    seqid: int
    flags: int
    protocol: ProtocolKind
    transforms: tuple[int, ...] = ()
    headers: Headers = ()

    def get(self, name: bytes) -> bytes | None:
        """The value of info header ``name`` (the last one if repeated, as a dict would keep)."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None


class WireError(Exception):
    """Base of every error raised by the wire layer.

    ``complete`` is only filled by :meth:`MessageReader.feed`: the messages that were whole,
    in order, before the bad bytes in the same ``feed`` call (so pipelined calls ahead of the
    error can still be answered).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.complete: list[bytes] = []
        # The same messages as ``complete`` with their headers and THeader frame fields,
        # filled by :meth:`MessageReader.feed_frames` only.
        self.frames: list[tuple[bytes, MessageHeader, HeaderInfo | None]] = []


class FrameTooLarge(WireError):
    """A message is (or announces it will be) larger than ``max_frame_size``.

    ``header`` is set when the message header decoded before the limit was hit (unframed
    streams), so the call or reply it belongs to can be answered or failed by its seqid; the
    stream itself cannot be resynchronised. (Framed streams can skip such a frame instead:
    ``MessageReader(skip_oversized=True)``.)
    """

    def __init__(self, message: str, header: MessageHeader | None = None) -> None:
        super().__init__(message)
        self.header = header


class MalformedMessage(WireError):
    """Garbage, truncation or a limit hit.

    ``header`` is set when the message header itself decoded, so the caller can answer with a
    PROTOCOL_ERROR ``TApplicationException`` carrying the caller's name and seqid.
    ``frame`` is set when the message came in a THeader frame whose header decoded: the
    answer then goes back in such a frame (see ``gateway.thrift.answers.error_answer``).
    """

    def __init__(
        self,
        message: str,
        header: MessageHeader | None = None,
        frame: HeaderInfo | None = None,
    ) -> None:
        super().__init__(message)
        self.header = header
        self.frame = frame


class NotThrift(WireError):
    """The first bytes of a connection are not any supported Thrift transport/protocol."""
