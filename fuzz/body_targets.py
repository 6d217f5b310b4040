"""Fuzz targets for message bodies: the binary scanner, the walker, call keys, transcoding.

Input layout: a few parameter bytes, then a body (or a whole message for ``transcode``).
"""

from __future__ import annotations

from fuzz.model import KNOWN_DEFECTS, FuzzInput, decode
from fuzz.stream_targets import pick_limits
from gateway.thrift import (
    CallIdentity,
    Limits,
    MalformedMessage,
    MessageType,
    ProtocolKind,
    call_identity,
    canonical_args,
    key_parts,
    read_header,
    transcode,
)
from gateway.thrift.binscan import scan_struct
from gateway.thrift.callkey import CanonicalSink
from gateway.thrift.message import encode_header
from gateway.thrift.protocols import InputBuffer, OutputBuffer, reader, writer
from gateway.thrift.walk import NULL_SINK, BodyErrors, walk_body, walk_struct

BINARY, NONSTRICT, COMPACT = (
    ProtocolKind.BINARY,
    ProtocolKind.BINARY_NONSTRICT,
    ProtocolKind.COMPACT,
)
# A compact varint of 1 byte becomes a binary i64 of 8 (the worst blow-up), plus headers.
GROWTH = 8
SLACK = 64


def _other(protocol: ProtocolKind) -> ProtocolKind:
    return BINARY if protocol is COMPACT else COMPACT


def _message(protocol: ProtocolKind, body: bytes, seqid: int = 7, name: str = "m") -> bytes:
    return encode_header(protocol, name, MessageType.CALL, seqid) + body


def _outcome(message: bytes, protocol: ProtocolKind, sink: object, limits: Limits) -> bool:
    """Whether the walk accepted the message; only MalformedMessage may refuse it."""
    try:
        walk_body(message, read_header(message, protocol), protocol, sink, limits)
    except MalformedMessage:
        return False
    return True


def binscan(data: bytes) -> None:
    """The binary scanner accepts exactly what the walker accepts, ends where it ends, and
    says "canonical" only of bytes that are their own canonical form; canonical forms are
    valid bodies and their own canonical form."""
    inp = FuzzInput(data)
    limits = pick_limits(inp)
    body = inp.rest()
    try:
        end, canonical = scan_struct(body, 0, limits)
    except MalformedMessage:
        end, canonical = -1, False
    walked = InputBuffer(body, 0)
    try:
        with BodyErrors(read_header(_message(BINARY, b""), BINARY)):
            walk_struct(reader(BINARY, walked, limits), NULL_SINK, limits)
        walk_end = walked.pos
    except MalformedMessage:
        walk_end = -1
    assert end == walk_end, f"scanner ends at {end}, walker at {walk_end}"
    if end < 0:
        return
    form = _canonical(body, limits)
    if canonical:
        assert form == body[:end], "the scanner called a non-canonical body canonical"
    # The canonical form is a valid binary body, and its own canonical form. (The scanner may
    # still call it non-canonical: it is conservative, e.g. for sets of invalid UTF-8.)
    assert scan_struct(form, 0, limits)[0] == len(form), "canonical form is not a body"
    assert _canonical(form, limits) == form, "the canonical form is not its own"
    assert len(form) <= GROWTH * end + SLACK


def _canonical(body: bytes, limits: Limits) -> bytes:
    sink = CanonicalSink()
    with BodyErrors(read_header(_message(BINARY, b""), BINARY)):
        walk_struct(reader(BINARY, InputBuffer(body, 0), limits), sink, limits)
    return bytes(sink.out)


def walk(data: bytes) -> None:
    """The walker refuses a body (MalformedMessage only) whatever it writes to; what it
    transcodes decodes (thrift's own decoder) to the same value and, in normal form, keys
    alike; output is bounded by the input's size."""
    inp = FuzzInput(data)
    protocol = inp.pick((BINARY, COMPACT))
    limits = pick_limits(inp)
    exclude = frozenset({inp.integer(2, signed=True)}) if inp.byte() & 1 else frozenset()
    body = inp.rest()
    message = _message(protocol, body)
    header = read_header(message, protocol)
    accepted = _outcome(message, protocol, NULL_SINK, limits)
    out = OutputBuffer()
    transcoded = _outcome(message, protocol, writer(_other(protocol), out), limits)
    assert transcoded == accepted, "transcoding and validation disagree on a body"
    try:
        form = canonical_args(message, protocol, limits=limits, header=header)
    except MalformedMessage:
        form = None
    assert (form is not None) == accepted, "the call key and validation disagree on a body"
    try:
        canonical_args(message, protocol, exclude_fields=exclude, limits=limits, header=header)
    except MalformedMessage:
        assert not accepted, "excluding a field refused a valid body"
    else:
        assert accepted, "excluding a field accepted an invalid body"
    if form is None:
        return
    other = bytes(out.buf)
    assert len(other) <= GROWTH * len(body) + SLACK and len(form) <= GROWTH * len(body) + SLACK
    assert decode(protocol, body) == decode(_other(protocol), other), "transcoding changed a value"
    as_other = _message(_other(protocol), other)
    back = _body(transcode(as_other, _other(protocol), protocol, limits=limits), protocol)
    if back == body:  # normal form (see callkey): the other encoding has the same key
        again = canonical_args(as_other, _other(protocol), limits=limits)
        assert again == form, "transcoding changed the call key"


def _identity(message: bytes, protocol: ProtocolKind, limits: Limits) -> CallIdentity | None:
    try:
        return call_identity(message, protocol, backend="b", upstream_name="m", limits=limits)
    except MalformedMessage:
        return None


def _body(message: bytes, protocol: ProtocolKind) -> bytes:
    return message[read_header(message, protocol).body_offset :]


def callkey(data: bytes, *, known: frozenset[str] = KNOWN_DEFECTS) -> None:
    """Two calls with one key decode (thrift's Python decoder, and Java's bool rule unless a
    known defect) to equal values; the seqid never changes a key, nor do the protocol and
    field order of a body in normal form; keys split back into backend and upstream name."""
    inp = FuzzInput(data)
    protocol = inp.pick(list(ProtocolKind))
    limits = pick_limits(inp)
    op = inp.byte()
    where, value = inp.integer(2), inp.byte()
    body = inp.rest()
    a = _message(protocol, body)
    key_a = _identity(a, protocol, limits)
    if key_a is None:
        return
    backend, upstream = key_parts(key_a.key)
    assert (backend, upstream) == ("b", "m")
    other = transcode(a, protocol, _other(protocol))
    canonical = _message(BINARY, key_a.args)  # the canonical form is itself a binary body
    # Another seqid never changes the key. Neither do the other body encoding or the
    # canonical form, for a body in normal form (it survives a round trip through the other
    # encoding byte for byte): a non-canonical encoding (a bool byte 0x02, a long varint)
    # may key on its raw bytes instead.
    same = [(_message(protocol, body, seqid=-5), protocol)]
    if _body(transcode(other, _other(protocol), protocol), protocol) == body:
        same += [(other, _other(protocol)), (canonical, BINARY)]
    for b, proto_b in same:
        assert _identity(b, proto_b, limits) == key_a, "seqid, protocol or order changed a key"
    candidates = [*same, (other, _other(protocol)), (canonical, BINARY)]
    if body:  # one byte changed, inserted or dropped: keys may only match if values do
        i = where % len(body)
        variant = (
            body[:i] + bytes((value,)) + body[i + 1 :],
            body[:i] + bytes((value,)) + body[i:],
            body[:i] + body[i + 1 :],
        )[op % 3]
        candidates.append((_message(protocol, variant), protocol))
    for b, proto_b in candidates:
        key_b = _identity(b, proto_b, limits)
        if key_b is None or key_b.key != key_a.key:
            continue
        body_b = _body(b, proto_b)
        assert decode(protocol, body) == decode(proto_b, body_b), "one key, two values (Python)"
        if "binary-bool" not in known:
            strict_a = decode(protocol, body, strict_bool=True)
            assert strict_a == decode(proto_b, body_b, strict_bool=True), (
                "one key, two values (Java/Go bool rule)"
            )


def transcode_target(data: bytes) -> None:
    """transcode: only MalformedMessage; the result is a valid ``dst`` message with the
    requested name and seqid; its body is the input's verbatim (same body encoding) or
    decodes (thrift's Python decoder) to the same value and, in normal form, has the same
    call key; bounded size."""
    inp = FuzzInput(data)
    src, dst = inp.pick(list(ProtocolKind)), inp.pick(list(ProtocolKind))
    limits = pick_limits(inp)
    flags = inp.byte()
    name = inp.take(inp.byte() % 16).decode("utf-8", "replace") if flags & 1 else None
    seqid = inp.integer(4, signed=True) if flags & 2 else None
    message = inp.rest()
    try:
        header = read_header(message, src)
        out = transcode(message, src, dst, name=name, seqid=seqid, limits=limits)
    except MalformedMessage:
        return
    got = read_header(out, dst)
    assert got.name == (header.name if name is None else name)
    assert got.seqid == (header.seqid if seqid is None else seqid)
    assert got.type == header.type
    body, out_body = message[header.body_offset :], out[got.body_offset :]
    assert len(out_body) <= GROWTH * len(body) + SLACK
    if (src is COMPACT) == (dst is COMPACT):
        assert out_body == body, "a same-encoding transcode changed the body"
        return
    assert decode(src, body) == decode(dst, out_body), "transcoding changed a value"
    back = transcode(out, dst, src, limits=limits)
    if back[read_header(back, src).body_offset :] == body:  # normal form (see callkey)
        assert canonical_args(out, dst, limits=limits) == canonical_args(
            message, src, limits=limits
        )
