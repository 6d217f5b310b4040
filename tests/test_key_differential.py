"""Differential test of call keys: "same key" implies that every decoder decodes both calls to
equal values (issue 16, "conservative keys"; the rule is in docs/wire-notes.md).

Pairs of messages are generated from one random value of ``tests/keydiff/keydiff.thrift``
encoded twice, each time in binary or compact, with fields, set elements and map entries
shuffled, sometimes a field sent twice or a map key repeated, sometimes one byte of the
second message changed. Pairs the gateway accepts with the same key are decoded by Apache
Thrift's Python (generated code, thrift-compiler), thriftpy2, C++ (libthrift-dev, g++) and
Java (libthrift-java, javac) decoders; each must see both alike. The C++ and Java decoders
are built at test time into a temporary directory (never committed); each decoder skips
with the reason when its toolchain is missing.
"""

from __future__ import annotations

import importlib
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from thrift.Thrift import TType
from thrift_messages import message

from gateway.thrift import MalformedMessage, ProtocolKind, read_header
from gateway.thrift.callkey import canonical_args

BINARY, COMPACT = ProtocolKind.BINARY, ProtocolKind.COMPACT
HERE = Path(__file__).parent / "keydiff"
IDL = HERE / "keydiff.thrift"
SEEDS = range(1500)
JAVA_CP = ["/usr/share/java/thrift.jar", "/usr/share/java/slf4j-api.jar"]

DOUBLES = [0.0, -0.0, 1.5, -2.25]
STRINGS = [b"", b"a", b"b", b"\xc3\xa9", b"\xff", b"\xfe"]
INNER = (TType.STRUCT, "Inner")

# field id -> type descriptor of keydiff.thrift's Args (thrift_messages' notation; "Inner"
# marks the struct so values can be drawn for it).
ARGS: dict[int, Any] = {
    1: TType.BOOL, 2: TType.BYTE, 3: TType.I16, 4: TType.I32, 5: TType.I64,
    6: TType.DOUBLE, 7: TType.STRING, 8: TType.STRING,
    9: (TType.LIST, TType.BOOL), 10: (TType.SET, TType.STRING), 11: (TType.SET, TType.DOUBLE),
    12: (TType.MAP, TType.STRING, TType.I32), 13: (TType.MAP, TType.DOUBLE, TType.STRING),
    14: INNER, 15: (TType.SET, TType.I64), 16: (TType.MAP, TType.STRING, TType.I32),
    17: (TType.LIST, INNER),
}  # fmt: skip
INNER_FIELDS: dict[int, Any] = {1: TType.I32, 2: TType.DOUBLE, 3: TType.STRING}
SET_FIELDS = ("ss", "sd", "sl")  # Args' set-typed fields, by name


def _desc(desc: Any) -> Any:
    """``desc`` as thrift_messages wants it (structs are plain TType.STRUCT)."""
    if desc == INNER:
        return TType.STRUCT
    if isinstance(desc, tuple):
        return (desc[0], *(_desc(d) for d in desc[1:]))
    return desc


def _value(rng: random.Random, desc: Any) -> Any:
    """A random value of ``desc`` from small pools, so that collisions are likely."""
    if desc == INNER:
        return _struct(rng, INNER_FIELDS)
    if isinstance(desc, tuple):
        n = rng.randint(0, 3)
        if desc[0] == TType.MAP:
            return [(_value(rng, desc[1]), _value(rng, desc[2])) for _ in range(n)]
        return [_value(rng, desc[1]) for _ in range(n)]
    if desc == TType.BOOL:
        return rng.random() < 0.5
    if desc == TType.DOUBLE:
        return rng.choice(DOUBLES)
    if desc == TType.STRING:
        return rng.choice(STRINGS)
    return rng.randint(-2, 2)


def _struct(rng: random.Random, spec: dict[int, Any]) -> list[tuple[int, Any, Any]]:
    return [(fid, d, _value(rng, d)) for fid, d in spec.items() if rng.random() < 0.5]


def _shuffled(rng: random.Random, desc: Any, value: Any) -> Any:
    """``value`` with set elements and map entries (recursively) in a random order."""
    if desc == INNER:
        return _variant_fields(rng, value, INNER_FIELDS)
    if isinstance(desc, tuple):
        if desc[0] == TType.MAP:
            items = [(_shuffled(rng, desc[1], k), _shuffled(rng, desc[2], v)) for k, v in value]
        else:
            items = [_shuffled(rng, desc[1], e) for e in value]
        if desc[0] != TType.LIST:
            rng.shuffle(items)
        return items
    return value


def _variant_fields(
    rng: random.Random, fields: list[tuple[int, Any, Any]], spec: dict[int, Any]
) -> list[tuple[int, Any, Any]]:
    out = [(fid, d, _shuffled(rng, d, v)) for fid, d, v in fields]
    if spec is ARGS and rng.random() < 0.3:  # a field sent twice, with another value
        fid = rng.choice(list(spec))
        out.append((fid, spec[fid], _value(rng, spec[fid])))
    rng.shuffle(out)
    return out


def _encode(rng: random.Random, fields: list[tuple[int, Any, Any]]) -> tuple[ProtocolKind, bytes]:
    kind = rng.choice([BINARY, COMPACT])
    variant = _variant_fields(rng, fields, ARGS)
    wire = [(fid, _desc(d), _plain(d, v)) for fid, d, v in variant]
    return kind, message(kind, "m", wire)


def _plain(desc: Any, value: Any) -> Any:
    """``value`` in thrift_messages' notation (struct descriptors made plain)."""
    if desc == INNER:
        return [(fid, _desc(d), _plain(d, v)) for fid, d, v in value]
    if isinstance(desc, tuple):
        if desc[0] == TType.MAP:
            return [(_plain(desc[1], k), _plain(desc[2], v)) for k, v in value]
        return [_plain(desc[1], e) for e in value]
    return value


def _pair(seed: int) -> tuple[tuple[ProtocolKind, bytes], tuple[ProtocolKind, bytes]]:
    rng = random.Random(seed)
    base = _struct(rng, ARGS)
    first, second = _encode(rng, base), _encode(rng, base)
    if rng.random() < 0.3:  # one byte of the second changed
        kind, data = second
        at = rng.randrange(read_header(data, kind).body_offset, len(data))
        data = data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]
        second = (kind, data)
    return first, second


def _key(kind: ProtocolKind, data: bytes) -> bytes | None:
    try:
        return canonical_args(data, kind)
    except MalformedMessage:
        return None


def _body(kind: ProtocolKind, data: bytes) -> bytes:
    return data[read_header(data, kind).body_offset :]


@pytest.fixture(scope="module")
def same_key_pairs() -> list[tuple[ProtocolKind, bytes, ProtocolKind, bytes]]:
    """The generated pairs the gateway accepts with one key (bodies only)."""
    pairs = []
    for seed in SEEDS:
        (k1, m1), (k2, m2) = _pair(seed)
        key = _key(k1, m1)
        if key is not None and key == _key(k2, m2) and m1 != m2:
            pairs.append((k1, _body(k1, m1), k2, _body(k2, m2)))
    assert len(pairs) > 100, "the generator should give many distinct same-key pairs"
    return pairs


def _normal(value: Any) -> Any:
    """A decoded Python value made comparable bit for bit: doubles by their bytes (0.0 and
    -0.0 differ, as they do to Java), sets and maps as frozensets of normal values."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, float):
        return ("double", struct.pack(">d", value))
    if isinstance(value, (int, str, bytes)) or value is None:
        return value
    if isinstance(value, (set, frozenset)):
        return ("set", frozenset(_normal(e) for e in value))
    if isinstance(value, dict):
        return ("map", frozenset((_normal(k), _normal(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", tuple(_normal(e) for e in value))
    fields = sorted((k, v) for k, v in vars(value).items() if not k.startswith("_"))
    return (type(value).__name__, tuple((k, _normal(v)) for k, v in fields))


def _check(
    pairs: list[tuple[ProtocolKind, bytes, ProtocolKind, bytes]],
    decode: Callable[[ProtocolKind, bytes], Any],
) -> None:
    def outcome(kind: ProtocolKind, body: bytes) -> Any:
        try:
            return _normal(decode(kind, body))
        except Exception:
            return "error"

    for k1, b1, k2, b2 in pairs:
        assert outcome(k1, b1) == outcome(k2, b2), (k1, b1.hex(), k2, b2.hex())


def test_same_key_decodes_alike_in_thriftpy2(same_key_pairs: list[Any]) -> None:
    """thriftpy2 (pure-Python protocols) decodes every same-key pair to equal values."""
    import thriftpy2
    from thriftpy2.protocol.binary import TBinaryProtocol
    from thriftpy2.protocol.compact import TCompactProtocol
    from thriftpy2.transport.memory import TMemoryBuffer

    module = thriftpy2.load(str(IDL), module_name="keydiff_thrift")

    def decode(kind: ProtocolKind, body: bytes) -> Any:
        trans = TMemoryBuffer(body)
        proto = TCompactProtocol(trans) if kind is COMPACT else TBinaryProtocol(trans)
        args = module.Args()
        proto.read_struct(args)
        # thriftpy2 hands sets over as lists in wire order; a set field is a set (the IDL's
        # meaning, which the key relies on: see gateway/thrift/callkey.py), built in that
        # order as other Python decoders build it.
        for name in SET_FIELDS:
            if isinstance(getattr(args, name), list):
                setattr(args, name, set(getattr(args, name)))
        return args

    _check(same_key_pairs, decode)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keydiff")


def _thrift_gen(lang: str, out: Path) -> Path:
    compiler = shutil.which("thrift")
    if compiler is None:
        pytest.skip("thrift-compiler (Debian package) is not installed")
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [compiler, "--gen", lang, "-out", str(out), str(IDL)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return out


@pytest.fixture
def apache_python(build_dir: Path) -> Iterator[Any]:
    out = _thrift_gen("py", build_dir / "py")
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("keydiff.ttypes")
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == "keydiff" or m.startswith("keydiff.")]:
            del sys.modules[name]


def test_same_key_decodes_alike_in_apache_python(
    same_key_pairs: list[Any], apache_python: Any
) -> None:
    """Apache Thrift's Python generated code decodes every same-key pair to equal values."""
    from thrift.protocol.TBinaryProtocol import TBinaryProtocol
    from thrift.protocol.TCompactProtocol import TCompactProtocol
    from thrift.transport.TTransport import TMemoryBuffer

    def decode(kind: ProtocolKind, body: bytes) -> Any:
        trans = TMemoryBuffer(body)
        proto = TCompactProtocol(trans) if kind is COMPACT else TBinaryProtocol(trans)
        args = apache_python.Args()
        args.read(proto)
        return args

    _check(same_key_pairs, decode)


def _run_pairs(argv: list[str], pairs: list[Any]) -> list[str]:
    """Feed ``kind hex kind hex`` lines to a decoder program; its same/diff verdicts."""
    lines = "".join(
        f"{'c' if k1 is COMPACT else 'b'} {b1.hex() or '-'} "
        f"{'c' if k2 is COMPACT else 'b'} {b2.hex() or '-'}\n"
        for k1, b1, k2, b2 in pairs
    )
    done = subprocess.run(argv, input=lines, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    verdicts = done.stdout.split()
    assert len(verdicts) == len(pairs)
    return verdicts


def _assert_same(verdicts: list[str], pairs: list[Any]) -> None:
    differ = [
        (k1, b1.hex(), k2, b2.hex())
        for v, (k1, b1, k2, b2) in zip(verdicts, pairs, strict=True)
        if v != "same"
    ]
    assert differ == []


@pytest.mark.integration
def test_same_key_decodes_alike_in_cpp(same_key_pairs: list[Any], build_dir: Path) -> None:
    """Apache Thrift C++ (libthrift-dev; generated operator==) decodes every same-key pair to
    equal values."""
    gxx = shutil.which("g++")
    if gxx is None or not Path("/usr/include/thrift/Thrift.h").exists():
        pytest.skip("g++ and libthrift-dev (Debian packages) are needed for the C++ decoder")
    out = _thrift_gen("cpp", build_dir / "cpp")
    binary = build_dir / "keydiff-cpp"
    subprocess.run(
        [gxx, "-std=c++17", "-O0", f"-I{out}", str(HERE / "keydiff.cpp"),
         str(out / "keydiff_types.cpp"), "-lthrift", "-o", str(binary)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    _assert_same(_run_pairs([str(binary)], same_key_pairs), same_key_pairs)


@pytest.mark.integration
def test_same_key_decodes_alike_in_java(same_key_pairs: list[Any], build_dir: Path) -> None:
    """Apache Thrift Java (libthrift-java; generated equals) decodes every same-key pair to
    equal values."""
    javac, java = shutil.which("javac"), shutil.which("java")
    if javac is None or java is None or not all(Path(j).exists() for j in JAVA_CP):
        pytest.skip("a JDK and libthrift-java (Debian packages) are needed for the Java decoder")
    out = _thrift_gen("java:generated_annotations=suppress", build_dir / "java")
    classes = build_dir / "classes"
    classes.mkdir(exist_ok=True)
    cp = ":".join(JAVA_CP)
    sources = [str(p) for p in out.rglob("*.java")] + [str(HERE / "KeyDiff.java")]
    subprocess.run(
        [javac, "-nowarn", "-cp", cp, "-d", str(classes), *sources],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    verdicts = _run_pairs([java, "-cp", f"{cp}:{classes}", "KeyDiff"], same_key_pairs)
    _assert_same(verdicts, same_key_pairs)
