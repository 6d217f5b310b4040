"""call_identity: canonical, protocol-independent identities and keys of calls."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from thrift.Thrift import TType
from thrift_messages import ALL_PROTOCOLS, RICH_ARGS, Fields, message

from gateway.thrift import (
    Limits,
    MalformedMessage,
    ProtocolKind,
    call_identity,
    canonical_args,
    key_parts,
    transcode,
)

BINARY = ProtocolKind.BINARY
COMPACT = ProtocolKind.COMPACT
HELLO = [(1, TType.STRING, b"hello")]


def _key(
    fields: Fields,
    kind: ProtocolKind = BINARY,
    *,
    name: str = "alertSupervisor",
    seqid: int = 1,
    scope: str = "sup",
    upstream_name: str | None = None,
    exclude_fields: frozenset[int] = frozenset(),
) -> str:
    data = message(kind, name, fields, seqid=seqid)
    return key_of(data, kind, scope, upstream_name or name, exclude_fields=exclude_fields)


def key_of(
    data: bytes,
    kind: ProtocolKind,
    backend: str = "s",
    upstream_name: str = "m",
    **options: object,
) -> str:
    return call_identity(data, kind, backend=backend, upstream_name=upstream_name, **options).key  # type: ignore[arg-type]  # options are call_identity's keyword arguments


def test_key_format() -> None:
    """The key is "{backend}.{upstream name}:" followed by 32 lowercase hex characters."""
    assert re.fullmatch(r"sup\.alertSupervisor:[0-9a-f]{32}", _key(HELLO))


def test_key_parts_read_backend_and_upstream_name_back() -> None:
    """key_parts gives back the backend and the upstream name, service prefix included."""
    key = _key(HELLO, upstream_name="Supervisor:alertSupervisor")
    assert key_parts(key) == ("sup", "Supervisor:alertSupervisor")
    assert key_parts("not a key") == ("", "not a key")


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_protocols_give_the_same_key(kind: ProtocolKind) -> None:
    """Binary, non-strict binary and compact encodings of the same call share one key."""
    assert _key(RICH_ARGS, kind) == _key(RICH_ARGS, BINARY)


def test_compact_bools_match_binary_bools() -> None:
    """Compact's in-header booleans and boolean list elements canonicalise like binary's."""
    args = [(1, TType.BOOL, False), (2, (TType.LIST, TType.BOOL), [True, False, True])]
    assert _key(args, COMPACT) == _key(args, BINARY)


def test_field_order_is_irrelevant() -> None:
    """The same fields in a different wire order give the same key, nested structs included."""
    inner = [(1, TType.I32, 1), (2, TType.I32, 2)]
    a = [(1, TType.STRING, b"x"), (2, TType.STRUCT, inner)]
    b = [(2, TType.STRUCT, inner[::-1]), (1, TType.STRING, b"x")]
    assert _key(a) == _key(b)


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_map_order_is_irrelevant(kind: ProtocolKind) -> None:
    """Map entries in a different order give the same key."""
    entries = [(b"b", 2), (b"a", 1), (b"c", 3)]
    desc = (TType.MAP, TType.STRING, TType.I32)
    assert _key([(1, desc, entries)], kind) == _key([(1, desc, sorted(entries))], kind)


def test_set_order_is_irrelevant() -> None:
    """Set elements of integer or UTF-8 string types in a different order give the same key."""
    for desc, elems in (
        ((TType.SET, TType.I32), [2, 1]),
        ((TType.SET, TType.STRING), [b"b", b"a"]),
    ):
        assert _key([(1, desc, elems)]) == _key([(1, desc, elems[::-1])])


def test_order_of_sets_whose_equality_bytes_cannot_decide_is_kept() -> None:
    """Sets of doubles (0.0 == -0.0 to most decoders), structs and invalid UTF-8 strings (Java
    decodes those lossily) keep their wire order: reordered, they are another call."""
    for desc, elems in (
        ((TType.SET, TType.DOUBLE), [0.0, -0.0]),
        ((TType.SET, TType.STRUCT), [[(1, TType.I32, 2)], [(1, TType.I32, 1)]]),
        ((TType.SET, TType.STRING), [b"\xff", b"\xfe"]),
    ):
        assert _key([(1, desc, elems)]) != _key([(1, desc, elems[::-1])])


def test_list_order_matters() -> None:
    """Lists keep their order: a reversed list is a different call."""
    desc = (TType.LIST, TType.I32)
    assert _key([(1, desc, [1, 2])]) != _key([(1, desc, [2, 1])])


def test_seqid_is_irrelevant() -> None:
    """Calls differing only in seqid share one key."""
    assert _key(HELLO, seqid=1) == _key(HELLO, seqid=99999)


def test_upstream_name_enters_the_key() -> None:
    """The same arguments sent upstream as Supervisor:stats and Poetry:stats are two calls."""
    data = message(BINARY, "stats", HELLO)
    assert key_of(data, BINARY, upstream_name="Supervisor:stats") != key_of(
        data, BINARY, upstream_name="Poetry:stats"
    )


def test_client_message_name_is_irrelevant() -> None:
    """Only the upstream name counts: a plain and a multiplexed caller routed alike share a key."""
    plain = key_of(message(BINARY, "alert", HELLO), BINARY, upstream_name="alert")
    multiplexed = message(BINARY, "alert", HELLO, service="Supervisor")
    assert plain == key_of(multiplexed, BINARY, upstream_name="alert")


def test_backend_enters_the_key() -> None:
    """The same call to two backends has two keys."""
    data = message(BINARY, "alert", HELLO)
    assert key_of(data, BINARY, backend="a") != key_of(data, BINARY, backend="b")


def test_different_args_differ() -> None:
    """A different argument value gives a different key."""
    assert _key(HELLO) != _key([(1, TType.STRING, b"hellp")])


def test_same_value_different_type_differs() -> None:
    """The same number sent as i32 and as i64 gives different keys."""
    assert _key([(1, TType.I32, 5)]) != _key([(1, TType.I64, 5)])


def test_different_field_ids_differ() -> None:
    """The same value in a different field gives a different key."""
    assert _key(HELLO) != _key([(2, TType.STRING, b"hello")])


def test_different_scope_differs() -> None:
    """The scope enters the key."""
    assert _key(HELLO, scope="a") != _key(HELLO, scope="b")


def test_different_method_differs() -> None:
    """The method name enters the key."""
    assert _key(HELLO, name="alert").split(":")[1] != _key(HELLO, name="alarm").split(":")[1]


def test_scope_and_method_boundary_is_unambiguous() -> None:
    """Scope "a.b" with method "c" and scope "a" with method "b.c" hash differently."""
    assert _key(HELLO, scope="a.b", name="c")[-32:] != _key(HELLO, scope="a", name="b.c")[-32:]


def test_exclude_fields_ignores_top_level_field() -> None:
    """A field id in exclude_fields does not influence the key."""
    a = [(1, TType.STRING, b"hello"), (2, TType.I64, 1)]
    b = [(1, TType.STRING, b"hello"), (2, TType.I64, 2)]
    assert _key(a, exclude_fields=frozenset({2})) == _key(b, exclude_fields=frozenset({2}))


def test_exclude_fields_matches_absent_field() -> None:
    """Under a policy excluding a field, sending it gives the key of not sending it; a policy
    excluding nothing keys that call apart (issue 16: the exclusions are part of the
    identity, as two policies can reach one upstream name)."""
    a = [(1, TType.STRING, b"hello"), (2, TType.I64, 1)]
    excluded = frozenset({2})
    assert _key(a, exclude_fields=excluded) == _key(HELLO, exclude_fields=excluded)
    assert _key(a, exclude_fields=excluded) != _key(HELLO)


def test_exclude_fields_only_applies_at_top_level() -> None:
    """A nested field with an excluded id still counts."""
    a = [(1, TType.STRUCT, [(2, TType.I32, 1)])]
    b = [(1, TType.STRUCT, [(2, TType.I32, 2)])]
    assert _key(a, exclude_fields=frozenset({2})) != _key(b, exclude_fields=frozenset({2}))


def test_empty_map_types_are_irrelevant() -> None:
    """Empty maps canonicalise alike whatever key/value types binary declares for them."""
    a = [(1, (TType.MAP, TType.STRING, TType.I32), [])]
    b = [(1, (TType.MAP, TType.I64, TType.DOUBLE), [])]
    assert _key(a) == _key(b) == _key(a, COMPACT)


def test_negative_zero_differs_from_zero() -> None:
    """Doubles are compared by their IEEE bytes, so -0.0 and 0.0 differ."""
    assert _key([(1, TType.DOUBLE, 0.0)]) != _key([(1, TType.DOUBLE, -0.0)])


def test_key_survives_transcoding() -> None:
    """A call transcoded to compact has the key of the original."""
    data = message(BINARY, "m", RICH_ARGS)
    assert key_of(transcode(data, BINARY, COMPACT), COMPACT) == key_of(data, BINARY)


def test_canonical_form_of_simple_struct() -> None:
    """The canonical form of {1: "hi"} is type, id, length-prefixed bytes, then STOP."""
    data = message(COMPACT, "m", [(1, TType.STRING, b"hi")])
    assert canonical_args(data, COMPACT) == b"\x0b\x00\x01\x00\x00\x00\x02hi\x00"


def test_truncated_body_is_malformed_with_header() -> None:
    """A call cut inside its body is MalformedMessage carrying the header."""
    data = message(COMPACT, "m", HELLO, seqid=5)
    with pytest.raises(MalformedMessage) as info:
        key_of(data[:-2], COMPACT)
    assert info.value.header is not None and info.value.header.seqid == 5


def test_trailing_bytes_are_malformed() -> None:
    """Bytes after the args struct are MalformedMessage."""
    with pytest.raises(MalformedMessage):
        key_of(message(BINARY, "m", HELLO) + b"\x00", BINARY)


def test_depth_limit_applies() -> None:
    """call_identity enforces max_depth."""
    args = [(1, TType.STRUCT, [(1, TType.STRUCT, [(1, TType.I32, 1)])])]
    with pytest.raises(MalformedMessage):
        key_of(message(BINARY, "m", args), BINARY, limits=Limits(max_depth=2))


def test_out_of_range_compact_i16_is_malformed() -> None:
    """A compact i16 whose varint exceeds 16 bits is MalformedMessage."""
    data = message(COMPACT, "m", [(1, TType.I16, 1)])
    bad = data[:-2] + b"\xfe\xff\x07" + b"\x00"  # varint 131070: zigzag for 65535
    with pytest.raises(MalformedMessage):
        key_of(bad, COMPACT)


# -- repeated map keys, repeated field ids, sets (issue 8, item 8) ----------------------------

MAP_SI = (TType.MAP, TType.STRING, TType.I32)


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_repeated_map_keys_in_different_order_differ(kind: ProtocolKind) -> None:
    """{k:1, k:2} and {k:2, k:1} get different keys: a dict-decoding backend sees k=2 vs k=1."""
    assert _key([(1, MAP_SI, [(b"k", 1), (b"k", 2)])], kind) != _key(
        [(1, MAP_SI, [(b"k", 2), (b"k", 1)])], kind
    )


def test_repeated_map_keys_keep_wire_order_among_other_keys() -> None:
    """Entries move to their key's place, but entries of one repeated key keep wire order."""
    a = [(b"k", 1), (b"a", 9), (b"k", 2)]
    b = [(b"a", 9), (b"k", 1), (b"k", 2)]
    assert _key([(1, MAP_SI, a)]) == _key([(1, MAP_SI, b)])


def test_map_entries_sort_by_key_bytes_only() -> None:
    """The canonical map is its entries ordered by key bytes alone: b"b" before b"c" whatever
    the values are (a (key + value) sort would be the same here, since keys self-delimit)."""
    data = message(BINARY, "m", [(1, MAP_SI, [(b"c", 0), (b"b", 1)])])
    entry_b = b"\x00\x00\x00\x01b" + b"\x00\x00\x00\x01"
    entry_c = b"\x00\x00\x00\x01c" + b"\x00\x00\x00\x00"
    canonical = canonical_args(data, BINARY)
    assert canonical == b"\x0d\x00\x01" + b"\x0b\x08\x00\x00\x00\x02" + entry_b + entry_c + b"\x00"


def test_repeated_field_ids_keep_wire_order() -> None:
    """A struct with field 1 twice keeps the two in wire order (generated code keeps the last)."""
    a = [(1, TType.STRING, b"x"), (1, TType.STRING, b"y")]
    b = [(1, TType.STRING, b"y"), (1, TType.STRING, b"x")]
    assert _key(a) != _key(b)


def test_repeated_field_ids_keep_wire_order_when_fields_are_reordered() -> None:
    """Sorting fields by id is stable: field 2 moves, the two field 1s keep their order."""
    a = [(2, TType.I32, 7), (1, TType.STRING, b"x"), (1, TType.STRING, b"y")]
    b = [(1, TType.STRING, b"x"), (2, TType.I32, 7), (1, TType.STRING, b"y")]
    c = [(1, TType.STRING, b"y"), (2, TType.I32, 7), (1, TType.STRING, b"x")]
    assert _key(a) == _key(b) != _key(c)


def test_sets_with_repeated_elements_are_order_free() -> None:
    """Set elements sort by their bytes; equal elements are identical, so order cannot matter."""
    desc = (TType.SET, TType.STRING)
    assert _key([(1, desc, [b"a", b"b", b"a"])]) == _key([(1, desc, [b"a", b"a", b"b"])])


def _per_key_values(entries: list[tuple[bytes, int]]) -> dict[bytes, list[int]]:
    """What any backend can observe of a map: for each key, its values in wire order."""
    seen: dict[bytes, list[int]] = {}
    for key, value in entries:
        seen.setdefault(key, []).append(value)
    return seen


_ENTRIES = st.lists(st.tuples(st.sampled_from([b"a", b"b", b"ab"]), st.integers(0, 2)), max_size=5)


@given(_ENTRIES, _ENTRIES)
def test_maps_share_a_key_exactly_when_each_key_has_the_same_values_in_order(
    a: list[tuple[bytes, int]], b: list[tuple[bytes, int]]
) -> None:
    """Two maps canonicalise alike iff every key carries the same values in the same wire order,
    so first-wins and last-wins decoders alike see equal arguments whenever the keys are equal."""
    same_key = _key([(1, MAP_SI, a)]) == _key([(1, MAP_SI, b)])
    assert same_key == (_per_key_values(a) == _per_key_values(b))


def test_key_is_the_hash_of_backend_name_and_args_alone_without_key_headers() -> None:
    """Without key headers the key is sha256(len backend, backend, len name, name, canonical
    args), as it was before key headers existed; key-header bytes give another key, and equal
    ones the same."""
    data = message(BINARY, "m", HELLO)
    args = canonical_args(data, BINARY)
    digest = hashlib.sha256(b"\x00\x00\x00\x01s\x00\x00\x00\x01m" + args).hexdigest()[:32]
    plain = call_identity(data, BINARY, backend="s", upstream_name="m")
    assert plain.key == f"s.m:{digest}"
    tenant = call_identity(data, BINARY, backend="s", upstream_name="m", headers=b"\x01t")
    assert tenant.key != plain.key
    compact = message(COMPACT, "m", HELLO)
    same = call_identity(compact, COMPACT, backend="s", upstream_name="m", headers=b"\x01t")
    assert same.key == tenant.key
