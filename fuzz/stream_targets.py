"""Fuzz targets for the stream layer: message splitting (framing) and THeader frames.

Input layout: a few parameter bytes (see each target), then the bytes under test. Small
limits are picked from the input so that the fuzzer reaches every limit with small inputs.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fuzz.model import KNOWN_DEFECTS, FuzzInput
from gateway.thrift import (
    HeaderError,
    HeaderInfo,
    Limits,
    MessageReader,
    ProtocolKind,
    TransportKind,
    WireError,
    encode_frame,
    frame,
    parse_frame,
    read_header,
)
from gateway.thrift import theader as theader_module
from gateway.thrift.theader import (
    FIXED_SIZE,
    TRANSFORM_ZLIB,
    header_bytes_needed,
    inflate_prefix,
    parse_frame_header,
)

FRAME_SIZES = (64, 512, 4096)
HEADER_SIZES = (16, 256, 64 * 1024)
# A skipping reader buffers an oversized frame's headers only (framing._MAX_COMPRESSED_HEADER
# of compressed payload at most); this is a loose cap on that.
_SKIP_SLACK = 4 + FIXED_SIZE + 2 * (2 * 64 * 1024 + 1024)
# The most transforms a frame may cost on the reactor, whatever it lists: issue 16 asks for a
# cap of 4, so inflating more than 4 x (max_frame_size + 1) bytes for one frame is a bug.
MAX_TRANSFORM_WORK = 4


def pick_limits(inp: FuzzInput) -> Limits:
    return Limits(
        max_frame_size=inp.pick(FRAME_SIZES),
        max_depth=inp.pick((2, 8, 64)),
        max_collection_size=inp.pick((4, 64, 100_000)),
        max_header_size=inp.pick(HEADER_SIZES),
    )


def _feed_all(reader: MessageReader, chunks: list[bytes]) -> tuple[list[Any], list[Any], bool]:
    """Feed ``chunks``: (frames, skipped frames, whether it ended in an error)."""
    frames: list[Any] = []
    skipped: list[Any] = []
    for chunk in chunks:
        try:
            frames += reader.feed_frames(chunk)
        except WireError as exc:
            frames += exc.frames
            skipped += reader.take_skipped()
            # Errors are final: the same error again, whatever comes next.
            try:
                reader.feed(b"\0")
            except WireError as again:
                assert again is exc, "a second feed after an error raised another error"
            else:
                raise AssertionError("a reader fed after an error accepted bytes") from None
            return frames, skipped, True
        skipped += reader.take_skipped()
    return frames, skipped, False


def framing(data: bytes) -> None:
    """MessageReader: only WireErrors; chunking never changes the result; every message is
    whole and within limits; what a reader buffers is bounded; framed and buffered streams
    re-encode to their input, THeader frames re-parse to themselves."""
    inp = FuzzInput(data)
    transport = inp.pick(list(TransportKind))
    protocol = inp.pick(list(ProtocolKind))
    if transport is TransportKind.HEADER and protocol is ProtocolKind.BINARY_NONSTRICT:
        protocol = ProtocolKind.BINARY  # THeader has no non-strict protocol id
    limits = pick_limits(inp)
    skip = bool(inp.byte() & 1)
    cuts = sorted({inp.byte() for _ in range(inp.byte() % 6)})
    stream = inp.rest()
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]

    whole_reader = MessageReader(transport, protocol, limits, skip_oversized=skip)
    whole = _feed_all(whole_reader, [stream])
    chunked_reader = MessageReader(transport, protocol, limits, skip_oversized=skip)
    chunked = _feed_all(chunked_reader, chunks)
    if whole != chunked:
        # The one allowed difference: an unframed reader that has to wait for a message (its
        # lower bound on the bytes still needed holds for valid messages only) reports a bad
        # one later than a reader that saw the bytes at once - never other messages.
        deferred = whole[2] and not chunked[2] and chunked_reader.buffered > 0
        assert deferred and whole[:2] == chunked[:2], "chunking changed the messages"

    frames, skipped, failed = whole
    for message, header, info in frames:
        assert len(message) <= limits.max_frame_size, "a message over max_frame_size"
        assert read_header(message, protocol) == header
        assert (info is not None) == (transport is TransportKind.HEADER)
    for item in skipped:
        assert item.size > limits.max_frame_size, "skipped a frame within max_frame_size"
    if failed:
        return
    bound = limits.max_frame_size + 4
    if skip:
        bound = max(bound, _SKIP_SLACK + limits.max_header_size)
    assert whole_reader.buffered <= bound, f"{whole_reader.buffered} bytes buffered"
    if whole_reader.buffered or skipped:
        return
    if transport is TransportKind.FRAMED:
        assert b"".join(frame(m) for m, _, _ in frames) == stream
    elif transport is TransportKind.BUFFERED:
        assert b"".join(m for m, _, _ in frames) == stream
    else:
        for message, _, info in frames:
            _round_trip(message, info, limits)


def _round_trip(payload: bytes, info: HeaderInfo, limits: Limits) -> None:
    encoded = encode_frame(
        payload,
        seqid=info.seqid,
        protocol=info.protocol,
        flags=info.flags,
        transforms=info.transforms,
        headers=info.headers,
    )
    again, info_again = parse_frame(memoryview(encoded)[4:], limits)
    assert again == payload, "a re-encoded THeader frame has another payload"
    assert info_again == info, "a re-encoded THeader frame has other fields"


class _CountingZlib:
    """Stands in for ``zlib`` in gateway.thrift.theader: counts the bytes inflated."""

    error = zlib.error

    def __init__(self) -> None:
        self.inflated = 0

    def decompressobj(self) -> Any:
        counter = self
        real = zlib.decompressobj()

        class Counting:
            def decompress(self, data: bytes, max_length: int = 0) -> bytes:
                out = real.decompress(data, max_length)
                counter.inflated += len(out)
                return out

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        return Counting()

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data)


@contextmanager
def _counting_inflation() -> Iterator[_CountingZlib]:
    counter = _CountingZlib()
    setattr(theader_module, "zlib", counter)  # noqa: B010 - the module's own name for zlib
    try:
        yield counter
    finally:
        setattr(theader_module, "zlib", zlib)  # noqa: B010


def theader(data: bytes, *, known: frozenset[str] = KNOWN_DEFECTS) -> None:
    """THeader frames: parsing raw bytes raises HeaderError only, bounds the payload and the
    inflation work, agrees with the partial-header parser and the prefix inflater, and
    re-encodes to itself; frames we encode parse back to what was encoded."""
    inp = FuzzInput(data)
    limits = pick_limits(inp)
    mode = inp.byte()
    if mode & 1:
        body = _encoded_frame(inp, limits)
        if body is None:
            return
    else:
        body = inp.rest()
    with _counting_inflation() as counter:
        try:
            payload, info = parse_frame(body, limits)
        except HeaderError:
            payload = None
    if "theader-transforms" not in known:
        work = counter.inflated
        assert work <= MAX_TRANSFORM_WORK * (limits.max_frame_size + 1), (
            f"one {len(body)}-byte frame inflated {work} bytes"
        )
    if payload is None:
        return
    # Untransformed, the payload is the frame's own bytes (the reader bounds frame lengths).
    bound = limits.max_frame_size if info.transforms else len(body)
    assert len(payload) <= bound, "THeader payload inflated past max_frame_size"
    need = header_bytes_needed(body[:FIXED_SIZE], limits)
    assert need <= len(body)
    info_again, offset = parse_frame_header(body[:need], len(body), limits)
    assert info_again == info and offset == need
    if info.transforms:
        prefix = inflate_prefix(body[offset:], len(info.transforms), 64, info)
        assert payload.startswith(prefix), "inflate_prefix disagrees with parse_frame"
        if len(info.transforms) == 1:
            assert len(prefix) == min(64, len(payload))
    _round_trip(payload, info, limits)


def _encoded_frame(inp: FuzzInput, limits: Limits) -> bytes | None:
    """A frame built by encode_frame from the input; checked to parse back (None: done)."""
    protocol = inp.pick((ProtocolKind.BINARY, ProtocolKind.COMPACT))
    seqid = inp.integer(4, signed=True)
    flags = inp.integer(2)
    transforms = (TRANSFORM_ZLIB,) * (inp.byte() % 9)
    headers = tuple(
        (inp.take(inp.byte() % 8), inp.take(inp.byte() % 8)) for _ in range(inp.byte() % 4)
    )
    payload = inp.rest()
    try:
        whole = encode_frame(
            payload,
            seqid=seqid,
            protocol=protocol,
            flags=flags,
            transforms=transforms,
            headers=headers,
        )
    except ValueError:
        # The only field it may refuse here: a transform listed twice (the cap, issue 16).
        assert len(transforms) > 1, "encode_frame refused valid fields"
        return None
    body = whole[4:]
    header_size = int.from_bytes(body[8:10], "big") * 4
    fits = len(payload) <= limits.max_frame_size and header_size <= limits.max_header_size
    try:
        got, info = parse_frame(body, limits)
    except HeaderError:
        # A cap on transforms may refuse several; one, or none, must always parse.
        assert not (fits and len(transforms) <= 1), "a valid THeader frame was refused"
        return body
    expected = HeaderInfo(seqid, flags, protocol, transforms, headers)
    assert (got, info) == (payload, expected), "an encoded THeader frame parsed differently"
    return body
