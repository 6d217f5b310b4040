"""A fast path over binary-protocol bodies: validate one, and see if it is already canonical.

The generic walker (``walk.py``) reads a body through thrift's protocol classes, one method
call per value - general, but it is most of the cost of a proxied call. Binary bodies are
simple enough to check with a few ``unpack_from`` calls per value, and the binary encoding
of a body is byte for byte its canonical form (``callkey.py``) whenever

* the fields of every struct come in ascending id order (repeated ids in any order: a
  stable sort keeps them),
* set elements and map keys of the types in :data:`ORDERED_KEYS` come in ascending byte
  order (maps: a stable sort by key); others keep their wire order anyway,
* doubles survive a float round trip, and empty maps declare types 0/0.

A bool byte other than 0 or 1 is malformed (decoders disagree on what it means).

That is what most generated code sends for most calls, so the call key of such a call is a
hash of its body bytes, with no walk at all. :func:`scan_struct` enforces the same limits as
the walker and raises :class:`MalformedMessage` for the same bodies; where a body is not
canonical, callers fall back to the walker, which normalises it.
"""

from __future__ import annotations

from struct import Struct

from gateway.thrift.kinds import Limits, MalformedMessage

_FIELD = Struct(">bh")
_I32 = Struct(">i")
_D = Struct(">d")
_ELEMENTS = Struct(">bi")  # element type, size (list/set)
_MAP = Struct(">bbi")  # key type, value type, size

# Thrift's type ids (thrift.Thrift.TType), as the binary and compact protocols and
# gateway.thrift.walk use them.
STOP, BOOL, BYTE, DOUBLE, I16, I32, I64, STRING, STRUCT, MAP, SET, LIST, UUID = (
    0, 2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 15, 16,
)  # fmt: skip
# Fixed-size scalars: type -> size in bytes (bool and double are checked for canonicality).
_FIXED = {BYTE: 1, I16: 2, I32: 4, I64: 8, UUID: 16}
VALUE_TYPES = frozenset({BOOL, BYTE, DOUBLE, I16, I32, I64, STRING, STRUCT, MAP, SET, LIST, UUID})
# Set elements and map keys of these types are put in byte order by the canonical form
# (callkey.py): equal bytes mean equal values and different bytes different values, for
# every decoder (strings only when all are valid UTF-8: Java decodes invalid ones lossily).
# Doubles (0.0 == -0.0, NaN), structs and containers keep their wire order.
ORDERED_KEYS = frozenset({BOOL, BYTE, I16, I32, I64, STRING, UUID})


def scan_struct(buf: bytes, pos: int, limits: Limits, depth: int = 1) -> tuple[int, bool]:
    """Check the binary struct at ``buf[pos:]``; ``(where it ends, already canonical)``.

    ``depth`` is its nesting level (a message body is 1). Truncation, bad types, negative or
    oversized lengths and nesting beyond ``limits.max_depth`` raise MalformedMessage
    (without a header: callers add it).
    """
    if depth > limits.max_depth:
        raise MalformedMessage(f"nesting deeper than {limits.max_depth}")
    end = len(buf)
    canonical = True
    last_id = -0x8000
    while True:
        if pos >= end:
            raise MalformedMessage("message body is truncated")
        ftype = buf[pos]
        if ftype == STOP:
            return pos + 1, canonical
        if pos + 3 > end:
            raise MalformedMessage("message body is truncated")
        ftype, fid = _FIELD.unpack_from(buf, pos)
        if ftype not in VALUE_TYPES:
            raise MalformedMessage(f"invalid type id {ftype}")
        if fid < last_id:
            canonical = False
        last_id = fid
        pos, ok = _scan_value(buf, pos + 3, ftype, limits, depth)
        canonical = canonical and ok


def _scan_value(buf: bytes, pos: int, ttype: int, limits: Limits, depth: int) -> tuple[int, bool]:
    """Check one value of (valid) type ``ttype`` at nesting level ``depth``."""
    size = _FIXED.get(ttype)
    if size is not None:
        if pos + size > len(buf):
            raise MalformedMessage("message body is truncated")
        return pos + size, True
    if ttype == STRING:
        return _scan_string(buf, pos, limits)
    if ttype == BOOL:
        if pos >= len(buf):
            raise MalformedMessage("message body is truncated")
        if buf[pos] > 1:  # decoders disagree on the others (see protocols._CanonicalBinary)
            raise MalformedMessage(f"bool byte {buf[pos]} (only 0 and 1 are canonical)")
        return pos + 1, True
    if ttype == DOUBLE:
        if pos + 8 > len(buf):
            raise MalformedMessage("message body is truncated")
        raw = buf[pos : pos + 8]
        return pos + 8, _D.pack(_D.unpack(raw)[0]) == raw  # e.g. a signalling NaN may change
    if ttype == STRUCT:
        return scan_struct(buf, pos, limits, depth + 1)
    if ttype == MAP:
        return _scan_map(buf, pos, limits, depth + 1)
    return _scan_elements(buf, pos, ttype == SET, limits, depth + 1)


def _scan_string(buf: bytes, pos: int, limits: Limits) -> tuple[int, bool]:
    if pos + 4 > len(buf):
        raise MalformedMessage("message body is truncated")
    (size,) = _I32.unpack_from(buf, pos)
    if size < 0:
        raise MalformedMessage("negative string length")
    if size > limits.max_string_size:
        raise MalformedMessage(f"string of {size} bytes exceeds {limits.max_string_size}")
    stop = pos + 4 + size
    if stop > len(buf):
        raise MalformedMessage("message body is truncated")
    return stop, True


def _size(size: int, limits: Limits) -> None:
    if size < 0:
        raise MalformedMessage("negative collection size")
    if size > limits.max_collection_size:
        raise MalformedMessage(f"collection of {size} exceeds {limits.max_collection_size}")


def _scan_elements(
    buf: bytes, pos: int, is_set: bool, limits: Limits, depth: int
) -> tuple[int, bool]:
    if depth > limits.max_depth:
        raise MalformedMessage(f"nesting deeper than {limits.max_depth}")
    if pos + 5 > len(buf):
        raise MalformedMessage("message body is truncated")
    etype, size = _ELEMENTS.unpack_from(buf, pos)
    if etype not in VALUE_TYPES:
        raise MalformedMessage(f"invalid type id {etype}")
    _size(size, limits)
    pos += 5
    canonical = True
    previous = b""
    fixed = _FIXED.get(etype)
    is_set = is_set and etype in ORDERED_KEYS  # other sets keep their wire order
    for _ in range(size):
        start = pos
        if fixed is not None:  # most large lists: no call per element
            pos += fixed
            if pos > len(buf):
                raise MalformedMessage("message body is truncated")
            ok = True
        else:
            pos, ok = _scan_value(buf, pos, etype, limits, depth)
        canonical = canonical and ok
        if is_set and canonical:
            element = buf[start:pos]
            if element < previous:
                canonical = False
            previous = element
    return pos, canonical


def _scan_map(buf: bytes, pos: int, limits: Limits, depth: int) -> tuple[int, bool]:
    if depth > limits.max_depth:
        raise MalformedMessage(f"nesting deeper than {limits.max_depth}")
    if pos + 6 > len(buf):
        raise MalformedMessage("message body is truncated")
    ktype, vtype, size = _MAP.unpack_from(buf, pos)
    _size(size, limits)
    pos += 6
    if size == 0:
        # Compact carries no types for an empty map; the canonical form has 0/0. Types that
        # are neither valid nor 0 are refused (as by the walker): some decoders reject them.
        for t in (ktype, vtype):
            if t != STOP and t not in VALUE_TYPES:
                raise MalformedMessage(f"invalid type id {t}")
        return pos, ktype == 0 and vtype == 0
    if ktype not in VALUE_TYPES or vtype not in VALUE_TYPES:
        raise MalformedMessage(f"invalid type id {ktype if ktype not in VALUE_TYPES else vtype}")
    canonical = True
    ordered = ktype in ORDERED_KEYS  # other maps keep their wire order
    previous = b""
    for _ in range(size):
        start = pos
        pos, key_ok = _scan_value(buf, pos, ktype, limits, depth)
        key = buf[start:pos]
        pos, value_ok = _scan_value(buf, pos, vtype, limits, depth)
        canonical = canonical and key_ok and value_ok and (key >= previous or not ordered)
        previous = key
    return pos, canonical
