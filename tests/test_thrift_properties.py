"""Property tests over random argument trees encoded by the thrift library."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from thrift.Thrift import TType
from thrift_messages import Desc, Fields, message

from gateway.thrift import (
    MessageReader,
    ProtocolKind,
    TransportKind,
    call_identity,
    encode,
    transcode,
)

BINARY = ProtocolKind.BINARY
COMPACT = ProtocolKind.COMPACT
NONSTRICT = ProtocolKind.BINARY_NONSTRICT
MAX_NESTING = 3

SCALARS: dict[int, st.SearchStrategy[Any]] = {
    TType.BOOL: st.booleans(),
    TType.BYTE: st.integers(-(2**7), 2**7 - 1),
    TType.I16: st.integers(-(2**15), 2**15 - 1),
    TType.I32: st.integers(-(2**31), 2**31 - 1),
    TType.I64: st.integers(-(2**63), 2**63 - 1),
    TType.DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
    TType.STRING: st.binary(max_size=20),
    TType.UUID: st.uuids(),
}


def _key(data: bytes, kind: ProtocolKind) -> str:
    return call_identity(data, kind, backend="s", upstream_name="m").key


def descs(depth: int) -> st.SearchStrategy[Desc]:
    scalar = st.sampled_from(sorted(SCALARS))
    if depth >= MAX_NESTING:
        return scalar
    inner = descs(depth + 1)
    return st.one_of(
        scalar,
        st.just(TType.STRUCT),
        st.tuples(st.just(TType.LIST), inner),
        st.tuples(st.just(TType.SET), inner),
        st.tuples(st.just(TType.MAP), inner, inner),
    )


def values(desc: Desc, depth: int, empty_maps: bool) -> st.SearchStrategy[Any]:
    if isinstance(desc, int):
        if desc == TType.STRUCT:
            return fields(depth + 1, empty_maps)
        return SCALARS[desc]
    if desc[0] == TType.MAP:
        entry = st.tuples(
            values(desc[1], depth + 1, empty_maps), values(desc[2], depth + 1, empty_maps)
        )
        return st.lists(entry, min_size=0 if empty_maps else 1, max_size=3)
    return st.lists(values(desc[1], depth + 1, empty_maps), max_size=4)


@st.composite
def _fields(draw: st.DrawFn, depth: int, empty_maps: bool) -> Fields:
    ids = draw(st.lists(st.integers(-(2**15), 2**15 - 1), max_size=5, unique=True))
    out: Fields = []
    for fid in ids:
        desc = draw(descs(depth))
        out.append((fid, desc, draw(values(desc, depth, empty_maps))))
    return out


def fields(depth: int = 1, empty_maps: bool = True) -> st.SearchStrategy[Fields]:
    return _fields(depth, empty_maps)


@settings(max_examples=200, deadline=None)
@given(args=fields())
def test_binary_and_compact_give_the_same_key(args: Fields) -> None:
    """Any argument tree gets one call key whichever protocol carries it."""
    keys = {_key(message(k, "m", args), k) for k in (BINARY, COMPACT, NONSTRICT)}
    assert len(keys) == 1


@settings(max_examples=200, deadline=None)
@given(args=fields(empty_maps=False))
def test_compact_to_binary_equals_direct_binary(args: Fields) -> None:
    """Transcoding a compact call to binary gives exactly thrift's own binary encoding."""
    compact = message(COMPACT, "Svc:m", args, seqid=-12)
    assert transcode(compact, COMPACT, BINARY) == message(BINARY, "Svc:m", args, seqid=-12)


@settings(max_examples=200, deadline=None)
@given(args=fields(empty_maps=False))
def test_binary_to_compact_equals_direct_compact(args: Fields) -> None:
    """Transcoding a binary call to compact gives exactly thrift's own compact encoding."""
    binary = message(BINARY, "m", args, seqid=7)
    assert transcode(binary, BINARY, COMPACT) == message(COMPACT, "m", args, seqid=7)


@settings(max_examples=100, deadline=None)
@given(args=fields(), data=st.data())
def test_field_order_never_matters(args: Fields, data: st.DataObject) -> None:
    """Permuting the top-level fields keeps the call key."""
    shuffled = data.draw(st.permutations(args))
    assert _key(message(COMPACT, "m", shuffled), COMPACT) == _key(
        message(COMPACT, "m", args), COMPACT
    )


@settings(max_examples=100, deadline=None)
@given(
    args=st.lists(fields(), min_size=1, max_size=3),
    protocol=st.sampled_from(list(ProtocolKind)),
    transport=st.sampled_from([TransportKind.FRAMED, TransportKind.BUFFERED]),
    data=st.data(),
)
def test_reader_splits_at_any_chunking(
    args: list[Fields], protocol: ProtocolKind, transport: TransportKind, data: st.DataObject
) -> None:
    """However a stream of messages is cut into chunks, the reader returns the messages."""
    messages = [message(protocol, "m", a, seqid=i) for i, a in enumerate(args)]
    stream = b"".join(encode(transport, m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = MessageReader(transport, protocol)
    out: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += reader.feed(stream[start:end])
    assert out == messages
