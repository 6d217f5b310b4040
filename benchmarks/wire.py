"""Pre-encoded calls and expected replies for the raw-socket load generator and responder.

Everything is encoded once, up front, by the stock Apache ``thrift`` library (not the
gateway's own wire code, so a gateway bug cannot hide behind a shared encoder). What a run
does per call is patch a seqid into a ready buffer and compare reply bytes with ready ones.

Seqids have a fixed width on the wire so they can be patched in place: 4 bytes in the binary
protocol; in the compact protocol a varint, kept 3 bytes wide by using only seqids in
[2**14, 2**21). Where a seqid sits in a message is found by encoding the same message with
two seqids that differ in every byte and diffing, which works for any protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thrift.Thrift import TMessageType
from thrift.transport import TTransport

from clients.calls import ALERT, GET_POEM, Method, encode_call, protocol_factory

PROTOCOLS = ("binary", "compact")
TRANSPORTS = ("framed", "buffered")
METHODS: dict[str, Method] = {"alertSupervisor": ALERT, "getPoem": GET_POEM}


@dataclass(frozen=True)
class SeqidCodec:
    """How a protocol writes a seqid, restricted to values of one wire width."""

    protocol: str
    width: int  # bytes on the wire
    low: int  # smallest seqid used
    high: int  # largest seqid used

    def encode(self, seqid: int) -> bytes:
        if self.protocol == "binary":
            return seqid.to_bytes(4, "big")
        return bytes((seqid & 0x7F | 0x80, (seqid >> 7) & 0x7F | 0x80, seqid >> 14))

    def decode(self, buf: bytes, pos: int) -> int:
        if self.protocol == "binary":
            return int.from_bytes(buf[pos : pos + 4], "big")
        return (buf[pos] & 0x7F) | (buf[pos + 1] & 0x7F) << 7 | buf[pos + 2] << 14


CODECS = {
    "binary": SeqidCodec("binary", 4, 1, 2**31 - 1),
    "compact": SeqidCodec("compact", 3, 2**14, 2**21 - 1),
}


def expected_result(method: str, argument: str) -> str:
    """The example backend's success reply (gateway/examples/handlers.py; the generator's
    smoke test against that backend keeps the two in step)."""
    if method == "alertSupervisor":
        return "ack:" + argument
    if method == "getPoem":
        return (
            f"{argument}\n  Many asked the same thing at once;\n  the backend heard it only once.\n"
        )
    raise ValueError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")


def argument_name(method: str) -> str:
    return "message" if method == "alertSupervisor" else "title"


def encode_reply(protocol: str, method: str, seqid: int, success: str) -> bytes:
    """One unframed REPLY message whose result struct carries ``success``."""
    target = METHODS[method]
    assert target.result is not None
    buf = TTransport.TMemoryBuffer()
    prot = protocol_factory(protocol).getProtocol(buf)
    prot.writeMessageBegin(method, TMessageType.REPLY, seqid)
    target.result(success=success).write(prot)
    prot.writeMessageEnd()
    reply: bytes = buf.getvalue()
    return reply


def add_transport(transport: str, message: bytes) -> bytes:
    return len(message).to_bytes(4, "big") + message if transport == "framed" else message


def seqid_offset(codec: SeqidCodec, encode: Any) -> int:
    """Offset of the seqid in ``encode(seqid)``'s bytes, found by diffing two encodings."""
    low, high = codec.low, codec.high
    if codec.protocol == "binary":
        low, high = 0x01010101, 0x02020202  # differ in every byte
    a, b = encode(low), encode(high)
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    if len(a) != len(b) or not diff or diff[-1] - diff[0] + 1 != codec.width:
        raise AssertionError(f"seqid is not one {codec.width}-byte field: {a.hex()} {b.hex()}")
    return diff[0]


@dataclass(frozen=True)
class CallSet:
    """Calls of one method and encoding, one per argument ("variant"), all the same length.

    ``calls[v]`` is the whole call (with its frame) for argument ``v``, seqid to be patched at
    ``call_seqid_at``. A correct reply to call ``v`` with seqid ``s`` is exactly
    ``reply_head + codec.encode(s) + reply_tails[v]`` (``reply_size`` bytes, frame included).
    """

    method: str
    protocol: str
    transport: str
    arguments: tuple[str, ...]
    calls: tuple[bytes, ...]
    call_seqid_at: int
    reply_head: bytes
    reply_tails: tuple[bytes, ...]
    reply_size: int

    @property
    def codec(self) -> SeqidCodec:
        return CODECS[self.protocol]

    @property
    def framed(self) -> bool:
        return self.transport == "framed"


def build_callset(method: str, protocol: str, transport: str, arguments: Sequence[str]) -> CallSet:
    """Encode one call and its expected reply per argument; arguments must be one length."""
    if protocol not in PROTOCOLS or transport not in TRANSPORTS or method not in METHODS:
        raise ValueError(f"unsupported {method}/{protocol}/{transport}")
    if len({len(a.encode()) for a in arguments}) != 1:
        raise ValueError("arguments must all have the same encoded length (fixed reply size)")
    codec = CODECS[protocol]
    factory = protocol_factory(protocol)
    field = argument_name(method)

    def call(seqid: int, argument: str) -> bytes:
        fields: dict[str, Any] = {field: argument}
        message = encode_call(factory, METHODS[method], seqid, **fields)
        return add_transport(transport, message)

    def reply(seqid: int, argument: str) -> bytes:
        success = expected_result(method, argument)
        return add_transport(transport, encode_reply(protocol, method, seqid, success))

    first = arguments[0]
    call_at = seqid_offset(codec, lambda s: call(s, first))
    reply_at = seqid_offset(codec, lambda s: reply(s, first))
    replies = [reply(codec.low, a) for a in arguments]
    head = replies[0][:reply_at]
    if any(r[:reply_at] != head for r in replies):
        raise AssertionError("reply headers differ between arguments")
    return CallSet(
        method=method,
        protocol=protocol,
        transport=transport,
        arguments=tuple(arguments),
        calls=tuple(call(codec.low, a) for a in arguments),
        call_seqid_at=call_at,
        reply_head=head,
        reply_tails=tuple(r[reply_at + codec.width :] for r in replies),
        reply_size=len(replies[0]),
    )
