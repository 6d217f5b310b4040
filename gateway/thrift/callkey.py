"""Call identity and call keys: a hash of exactly what the backend receives of a call.

Canonical form (big-endian, every value self-delimiting, so concatenations sort unambiguously):

* struct: its fields sorted by field id (stable), each ``type:u8 id:i16 value``, then ``0x00``;
* bool ``0x00``/``0x01``; byte/i16/i32/i64 as signed big-endian; double as its IEEE-754 bytes
  (so -0.0 and 0.0 differ, as they may to the backend); string/binary ``len:u32 bytes``;
  uuid its 16 bytes;
* list ``etype:u8 size:u32`` then the elements in order;
* set ``etype:u8 size:u32`` then the elements sorted by their canonical bytes;
* map ``ktype:u8 vtype:u8 size:u32`` then the entries (key bytes + value bytes) sorted by
  their key bytes alone, with a stable sort; an empty map has types 0/0 because compact
  does not carry them.
* sets and maps are sorted only when their element/key type is one whose bytes decide
  equality for every decoder (``binscan.ORDERED_KEYS``: bool, byte, integers, uuid, and
  strings when all are valid UTF-8); sets and maps of doubles (``0.0 == -0.0``, NaN),
  structs, containers or invalid UTF-8 strings (Java decodes those lossily) keep their wire
  order.

Only canonical encodings of scalars are accepted at all, by validation and keys alike
(``protocols.reader``, ``binscan``): a binary bool is the byte 0 or 1, a compact list bool
1 or 2, compact varints are minimal and fit their type, field ids fit int16; anything else
is malformed (PROTOCOL_ERROR), because mainstream decoders read it differently (binary bool
0x02: true to Apache Python/C++ and thriftpy2, false to Java/Go). So the rule "two calls
share a key only if no mainstream decoder can tell them apart" holds by construction:
``tests/test_key_differential.py`` checks it against Apache Python, thriftpy2, C++ and Java.

Type ids are thrift's ``TType`` values as the protocol readers report them, so binary and
compact encodings of the same call have the same canonical form.

What is order-free, and why it is safe: two calls share a key only if the backend cannot tell
them apart. Decoders keep one value per struct field id and per map key (generated code keeps
the last one read, some keep the first), so

* struct fields are sorted by id with a *stable* sort: fields sent twice under one id keep
  their wire order, and ``{1: "x", 1: "y"}`` differs from ``{1: "y", 1: "x"}``;
* map entries are sorted by key only, stably: entries whose keys repeat keep their wire
  order, so ``{k: v1, k: v2}`` and ``{k: v2, k: v1}`` differ (a backend sees ``k = v2`` for
  one and ``k = v1`` for the other), while ``{a: 1, b: 2}`` and ``{b: 2, a: 1}`` are one call.
  Two maps canonicalise alike exactly when every key carries the same values in the same
  order. (With unique keys this order is the one a sort by key + value gives, because
  canonical keys are self-delimiting: keys of gateways before and after this rule agree.)
* set elements are sorted by their bytes; repeated elements are byte-identical, so their
  order cannot matter.

Maps and sets are taken to be unordered, as the Thrift IDL defines them: a backend whose
answer depends on the *iteration* order of a map or set it decoded (e.g. into an
insertion-ordered dict or a list) should not be coalesced on such arguments.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from dataclasses import dataclass
from uuid import UUID

from gateway.thrift.binscan import ORDERED_KEYS, STRING
from gateway.thrift.kinds import DEFAULT_LIMITS, Limits, ProtocolKind
from gateway.thrift.message import MessageHeader, read_header
from gateway.thrift.walk import scan_body, walk_body

_B = struct.Struct(">b")
_H = struct.Struct(">h")
_I = struct.Struct(">i")
_Q = struct.Struct(">q")
_D = struct.Struct(">d")
_U32 = struct.Struct(">I")
_FIELD = struct.Struct(">Bh")
_COLLECTION = struct.Struct(">BI")
_MAP = struct.Struct(">BBI")
_EXCLUDED = struct.Struct(">BI")
_COMPACT = ProtocolKind.COMPACT
_PEER_MARK = _U32.pack(0xFFFFFFFF)


def _entry_key(entry: tuple[bytes, bytes]) -> bytes:
    return entry[0]


def _all_utf8(strings: list[bytes]) -> bool:
    """Whether every canonical string (``len:u32 bytes``) is valid UTF-8: only then do all
    decoders map distinct ones to distinct values (Java replaces invalid sequences with
    U+FFFD, so two invalid keys could become one map key there)."""
    try:
        for string in strings:
            string[4:].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class CanonicalSink:
    """A write-only "protocol" producing the canonical form into ``out``.

    Writes are appended as they come; a struct whose fields arrived out of id order, and
    every set or map, is reordered in place when it ends. Sets and maps record where each
    element ends (``_ends``) so their elements can be cut out and sorted.
    """

    def __init__(self) -> None:
        self.out = bytearray()
        self._ends: list[int] | None = None  # element ends of the innermost set/map, if any
        # Per open struct/list/set/map: the parent's _ends, for structs the field starts, where
        # it starts, and for sets/maps whether their keys are strings (see _all_utf8).
        self._stack: list[tuple[list[int] | None, list[tuple[int, int]] | None, int, bool]] = []

    def _done(self) -> None:
        if self._ends is not None:
            self._ends.append(len(self.out))

    # -- structs ---------------------------------------------------------------------------

    def writeStructBegin(self, name: str) -> None:
        self._stack.append((self._ends, [], len(self.out), False))
        self._ends = None

    def writeFieldBegin(self, name: str, ttype: int, fid: int) -> None:
        fields = self._stack[-1][1]
        assert fields is not None
        fields.append((fid, len(self.out)))
        self.out += _FIELD.pack(ttype, fid)

    def writeFieldEnd(self) -> None:
        pass

    def writeFieldStop(self) -> None:
        fields = self._stack[-1][1]
        assert fields is not None
        if any(a[0] > b[0] for a, b in itertools.pairwise(fields)):
            out = self.out
            bounds = [start for _, start in fields] + [len(out)]
            segments = [
                (fid, bytes(out[bounds[i] : bounds[i + 1]])) for i, (fid, _) in enumerate(fields)
            ]
            segments.sort(key=lambda s: s[0])
            del out[bounds[0] :]
            for _, segment in segments:
                out += segment
        self.out.append(0)

    def writeStructEnd(self) -> None:
        self._ends = self._stack.pop()[0]
        self._done()

    # -- containers ------------------------------------------------------------------------

    def writeListBegin(self, etype: int, size: int) -> None:
        self.out += _COLLECTION.pack(etype, size)
        self._stack.append((self._ends, None, len(self.out), False))
        self._ends = None

    def writeListEnd(self) -> None:
        self._ends = self._stack.pop()[0]
        self._done()

    def writeSetBegin(self, etype: int, size: int) -> None:
        self.out += _COLLECTION.pack(etype, size)
        self._stack.append((self._ends, None, len(self.out), etype == STRING))
        # Element ends are recorded only where the elements may be put in order.
        self._ends = [] if etype in ORDERED_KEYS else None

    def writeSetEnd(self) -> None:
        ends = self._ends
        parent_ends, _, start, strings = self._stack.pop()
        if ends is not None and len(ends) > 1:
            out = self.out
            bounds = [start, *ends]
            elements = [bytes(out[bounds[i] : bounds[i + 1]]) for i in range(len(ends))]
            if not strings or _all_utf8(elements):
                elements.sort()  # equal elements are identical bytes: their order cannot show
                del out[start:]
                for element in elements:
                    out += element
        self._ends = parent_ends
        self._done()

    def writeMapBegin(self, ktype: int, vtype: int, size: int) -> None:
        ordered = ktype in ORDERED_KEYS
        if size == 0:
            ktype = vtype = 0
        self.out += _MAP.pack(ktype, vtype, size)
        self._stack.append((self._ends, None, len(self.out), ktype == STRING))
        self._ends = [] if ordered else None

    def writeMapEnd(self) -> None:
        # ``ends`` alternates key end, value end. Entries are ordered by their key bytes only
        # and the sort is stable, so entries whose keys repeat keep their wire order (see the
        # module docstring: a backend keeps one of them, so their order is observable).
        ends = self._ends
        parent_ends, _, start, strings = self._stack.pop()
        if ends is not None and len(ends) > 2:
            out = self.out
            entries = []
            entry_start = start
            for i in range(0, len(ends), 2):
                key_end, entry_end = ends[i], ends[i + 1]
                entries.append((bytes(out[entry_start:key_end]), bytes(out[entry_start:entry_end])))
                entry_start = entry_end
            if not strings or _all_utf8([key for key, _ in entries]):
                entries.sort(key=_entry_key)
                del out[start:]
                for _, entry in entries:
                    out += entry
        self._ends = parent_ends
        self._done()

    # -- scalars ---------------------------------------------------------------------------

    def writeBool(self, value: bool) -> None:
        self.out.append(1 if value else 0)
        self._done()

    def writeByte(self, value: int) -> None:
        self.out += _B.pack(value)
        self._done()

    def writeI16(self, value: int) -> None:
        self.out += _H.pack(value)
        self._done()

    def writeI32(self, value: int) -> None:
        self.out += _I.pack(value)
        self._done()

    def writeI64(self, value: int) -> None:
        self.out += _Q.pack(value)
        self._done()

    def writeDouble(self, value: float) -> None:
        self.out += _D.pack(value)
        self._done()

    def writeBinary(self, value: bytes) -> None:
        self.out += _U32.pack(len(value))
        self.out += value
        self._done()

    def writeUuid(self, value: UUID) -> None:
        self.out += value.bytes
        self._done()


def canonical_args(
    message: bytes,
    protocol: ProtocolKind,
    *,
    exclude_fields: frozenset[int] = frozenset(),
    limits: Limits = DEFAULT_LIMITS,
    header: MessageHeader | None = None,
) -> bytes:
    """The canonical form of the message body struct (top-level ``exclude_fields`` left out).

    ``header``, if given, must be ``read_header(message, protocol)`` (see :func:`call_identity`).
    """
    if header is None:
        header = read_header(message, protocol)
    # Binary bodies are usually canonical already (see binscan): then the body bytes are
    # the canonical form, checked in one quick pass instead of a walk.
    if not exclude_fields and protocol is not _COMPACT and scan_body(message, header, limits):
        return message[header.body_offset :]
    sink = CanonicalSink()
    walk_body(message, header, protocol, sink, limits, exclude_fields)
    return bytes(sink.out)


@dataclass(frozen=True, slots=True)
class CallIdentity:
    """What the backend receives of a call, and therefore the only input of its call key.

    ``backend`` is the backend's name, ``upstream_name`` the message name exactly as it is
    sent upstream (``"Supervisor:alertSupervisor"`` for a multiplexed backend, the bare name
    otherwise), ``args`` the canonical form of the arguments with the method's excluded
    fields left out, ``headers`` the canonical bytes of the THeader info headers the method
    keys on (:func:`gateway.thrift.theader.key_headers`; empty for methods without
    ``key_headers`` and for calls carrying none of them), ``peer`` the caller's verified
    client certificate (``gateway.proxy.tls.peer_identity``) for methods with ``key_peer``,
    empty otherwise and for callers without one. Two calls share a key only if all
    are equal: the backend could not tell them apart (or, for ``peer``, the callers are
    the same party). The seqid, the client's protocol and
    transport (THeader included), other info headers, and field order never matter.
    ``excluded`` is the sorted ``exclude_fields`` of the policy ``args`` was made under:
    part of the identity because two policies can reach one upstream name (``methods.
    "Svc:m"`` and ``methods.m``), and args without field 2 *because it was excluded* are
    not the args of a call that had no field 2.
    """

    backend: str
    upstream_name: str
    args: bytes
    headers: bytes = b""
    peer: bytes = b""
    excluded: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        """``"<backend>.<upstream_name>:<32 hex>"``, the name of this call in every table."""
        digest = hashlib.sha256()
        for part in (self.backend.encode("utf-8"), self.upstream_name.encode("utf-8")):
            # Length-prefixed so ("a.b", "c") and ("a", "b.c") cannot collide.
            digest.update(_U32.pack(len(part)))
            digest.update(part)
        digest.update(self.args)
        if self.excluded:
            # 0xFF cannot start the key headers (a u32 name length: 0x00 first) nor follow
            # the self-delimiting args otherwise; only present with exclusions, so a call
            # without them keeps the key it always had.
            digest.update(_EXCLUDED.pack(0xFF, len(self.excluded)))
            digest.update(b"".join(_H.pack(i) for i in self.excluded))
        if self.headers:
            # After the args, which are self-delimiting (a struct ends at its STOP byte), and
            # only when present: a call without key headers keeps the key it always had.
            digest.update(self.headers)
        if self.peer:
            # After a length no header name can have (see key_headers), so it cannot be
            # read as one more key header; absent, the key is the one it always was.
            digest.update(_PEER_MARK)
            digest.update(self.peer)
        return f"{self.backend}.{self.upstream_name}:{digest.hexdigest()[:32]}"


def key_parts(key: str) -> tuple[str, str]:
    """``(backend, upstream_name)`` of a key made by :attr:`CallIdentity.key`.

    Backend names never contain a dot (the config refuses them), upstream names may contain
    anything; a string that is not such a key gives ``("", key)``.
    """
    named, sep, digest = key.rpartition(":")
    backend, dot, upstream = named.partition(".")
    if not sep or not dot or len(digest) != 32:
        return "", key
    return backend, upstream


def call_identity(
    message: bytes,
    protocol: ProtocolKind,
    *,
    backend: str,
    upstream_name: str,
    exclude_fields: frozenset[int] = frozenset(),
    limits: Limits = DEFAULT_LIMITS,
    header: MessageHeader | None = None,
    headers: bytes = b"",
    peer: bytes = b"",
) -> CallIdentity:
    """The identity of ``message`` sent to ``backend`` as ``upstream_name``.

    Walks (and so validates) the body: :class:`MalformedMessage` carrying the header if the
    arguments are bad. ``header``, if given, must be ``read_header(message, protocol)``: the
    proxy parsed it already and passes it so a call's header is decoded once. ``headers``:
    the call's key headers (see :attr:`CallIdentity.headers`); ``peer``: its caller's
    identity (see :attr:`CallIdentity.peer`).
    """
    args = canonical_args(
        message, protocol, exclude_fields=exclude_fields, limits=limits, header=header
    )
    return CallIdentity(
        backend, upstream_name, args, headers, peer=peer, excluded=tuple(sorted(exclude_fields))
    )
