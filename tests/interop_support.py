"""Interop matrix helpers: code generation, independent-stack clients and the batch of calls.

Nothing here imports the gateway: clients and backends are stock Apache Thrift Python and
thriftpy2 (plus the C++ and Node.js drivers in tests/interop/), so a reply through the gateway
is compared with the same call made directly to the backend by the same stack.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
IDL = TESTS / "idl" / "interop.thrift"
DRIVERS = TESTS / "interop"
NPM_THRIFT = "thrift@0.17.0"  # the Node library matching Debian's compiler (0.17)
MIB = 1 << 20

# -- code generation and builds ---------------------------------------------------------------


def cache_dir() -> Path:
    """Where built C++ drivers and the npm package are kept between runs (never in the repo)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "thrift-gateway-interop"
    path.mkdir(parents=True, exist_ok=True)
    return path


def thrift_compiler() -> str | None:
    return shutil.which("thrift")


def generate(lang: str, out: Path) -> Path:
    """``thrift --gen lang`` of the interop IDL into ``out`` (created); returns ``out``."""
    compiler = thrift_compiler()
    assert compiler is not None
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [compiler, "--gen", lang, "-out", str(out), str(IDL)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()[:16]


def cpp_missing() -> str | None:
    """Why the C++ client cannot be built here, or None."""
    if thrift_compiler() is None:
        return "needs the thrift compiler (Debian thrift-compiler)"
    if shutil.which("g++") is None:
        return "needs g++"
    if not Path("/usr/include/thrift/Thrift.h").exists():
        return "needs the Apache Thrift C++ library (Debian libthrift-dev)"
    if not Path("/usr/include/boost/version.hpp").exists():
        return "needs the Boost headers libthrift-dev uses (Debian libboost-dev)"
    return None


def build_cpp_client() -> Path:
    """The C++ driver (tests/interop/cpp_client.cpp + generated code), built once per content.

    Cached under :func:`cache_dir` by a digest of the IDL, the driver and the compiler
    version, so an edit to either rebuilds and an unchanged tree costs nothing.
    """
    compiler = thrift_compiler()
    assert compiler is not None
    version = subprocess.run([compiler, "-version"], capture_output=True, check=True).stdout
    source = DRIVERS / "cpp_client.cpp"
    key = _digest(IDL.read_bytes(), source.read_bytes(), version)
    binary = cache_dir() / f"cpp-client-{key}"
    if binary.exists():
        return binary
    work = cache_dir() / f"cpp-build-{key}-{os.getpid()}"
    gen = generate("cpp", work)
    # The three translation units compile in parallel (-O0 keeps each short), then link.
    # THeader lives in libthriftz (it needs zlib), the rest in libthrift.
    sources = [source, gen / "Interop.cpp", gen / "interop_types.cpp"]
    compile_ = ["g++", "-std=c++17", "-O0", "-pipe", "-w", f"-I{gen}"]
    compiles = [
        subprocess.Popen(
            [*compile_, "-c", str(src), "-o", str(work / f"{src.stem}.o")],
            stderr=subprocess.PIPE,
            text=True,
        )
        for src in sources
    ]
    errors = [p.communicate(timeout=300)[1] for p in compiles if p.wait(timeout=300) != 0]
    partial = work / "client"
    if not errors:
        objects = [str(work / f"{src.stem}.o") for src in sources]
        done = subprocess.run(
            ["g++", *objects, "-o", str(partial), "-lthriftz", "-lthrift", "-lz"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            errors.append(done.stderr)
    if errors:
        raise RuntimeError(f"building the C++ interop client failed:\n{errors[0][-4000:]}")
    partial.replace(binary)  # atomic: a concurrent run sees the whole binary or none
    shutil.rmtree(work, ignore_errors=True)
    return binary


def node_missing() -> str | None:
    """Why the Node.js client cannot run here, or None."""
    if thrift_compiler() is None:
        return "needs the thrift compiler (Debian thrift-compiler)"
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "needs node and npm"
    return None


class NpmUnavailable(RuntimeError):
    """The npm registry could not provide the ``thrift`` package (offline, say)."""


def install_node_thrift() -> Path:
    """A node_modules directory with the npm ``thrift`` package, installed once into the cache."""
    prefix = cache_dir() / f"npm-{NPM_THRIFT.replace('@', '-')}"
    modules = prefix / "node_modules"
    if (modules / "thrift" / "package.json").exists():
        return modules
    partial = cache_dir() / f"npm-partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    done = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(partial),
         NPM_THRIFT],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise NpmUnavailable(f"npm install {NPM_THRIFT} failed: {done.stderr.strip()[-300:]}")
    if not (modules / "thrift" / "package.json").exists():
        shutil.rmtree(prefix, ignore_errors=True)
        partial.replace(prefix)
    return modules


# -- normalised results -------------------------------------------------------------------------


def norm(value: Any) -> Any:
    """A comparable form of a decoded Thrift value of either Python stack.

    Doubles become their IEEE bytes (NaN equals NaN, -0.0 differs from 0.0), sets are sorted,
    structs become (class name, sorted non-None fields), exceptions the same marked "raised".
    """
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return ("double", struct.pack(">d", value))
    if isinstance(value, int | str | bytes):
        return value
    if isinstance(value, list | tuple):
        return [norm(v) for v in value]
    if isinstance(value, set | frozenset):
        return ("set", sorted((norm(v) for v in value), key=repr))
    if isinstance(value, dict):
        return ("map", sorted(((norm(k), norm(v)) for k, v in value.items()), key=repr))
    fields = {k: norm(v) for k, v in vars(value).items() if not k.startswith("_")}
    if type(value).__name__ == "TApplicationException":
        return ("TApplicationException", value.type, value.message)
    return (type(value).__name__, sorted((k, v) for k, v in fields.items() if v is not None))


def same_double(a: float, b: float) -> bool:
    return struct.pack(">d", a) == struct.pack(">d", b) or (math.isnan(a) and math.isnan(b))


# -- the batch of calls ------------------------------------------------------------------------

Call = tuple[str, str, tuple[Any, ...]]  # label, method, arguments

UNICODE = "h\u00e9llo \u2713 \U0001d11e \u65e5\u672c"
NON_UTF8 = b"\xff\xfe\x00\x80binary\xc3"


def calls(types: Any) -> list[Call]:
    """Every call of the batch, built with ``types`` (generated ttypes, or a thriftpy2 module).

    Echo calls expect their argument back; the others are checked against the direct call.
    """
    t = types
    point = t.Point(x=-1, y=2**31 - 1)
    scalars = t.Scalars(
        flag=True, tiny=-128, small=-(2**15), medium=2**31 - 1, large=-(2**63),
        real=-0.0, text=UNICODE, data=NON_UTF8, color=t.Color.BLUE,
    )  # fmt: skip
    everything = t.Everything(
        scalars=scalars,
        ints=[0, -1, 2**31 - 1, -(2**31)],
        tags={"a", "b", UNICODE},
        counts={"x": 2**63 - 1, "": -(2**63)},
        nested=[{1: {"one"}, -2: set()}, {}],
        paths={"p": [point, t.Point(x=0, y=0)], "empty": []},
        shape=t.Shape(label=UNICODE),
        reals=[math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308, -0.0],
        blobs=[b"", NON_UTF8, bytes(range(256))],
        palette=[[t.Color.RED, t.Color.GREEN], []],
    )  # note and maybe stay unset (optional)
    batch: list[Call] = [
        ("ping", "ping", ()),
        ("bool", "echoBool", (False,)),
        ("byte-min", "echoByte", (-128,)),
        ("byte-max", "echoByte", (127,)),
        ("i16-min", "echoI16", (-(2**15),)),
        ("i32-min", "echoI32", (-(2**31),)),
        ("i32-max", "echoI32", (2**31 - 1,)),
        ("i64-min", "echoI64", (-(2**63),)),
        ("i64-max", "echoI64", (2**63 - 1,)),
    ]
    for label, real in [
        ("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf), ("-0.0", -0.0),
        ("max", 1.7976931348623157e308), ("denormal", 5e-324),
    ]:  # fmt: skip
        batch.append((f"double-{label}", "echoDouble", (real,)))
    batch += [
        ("string-unicode", "echoString", (UNICODE,)),
        ("string-empty", "echoString", ("",)),
        ("binary-non-utf8", "echoBinary", (NON_UTF8,)),
        ("enum", "echoEnum", (t.Color.BLUE,)),
        ("scalars", "echoScalars", (scalars,)),
        ("union-point", "echoUnion", (t.Shape(point=point),)),
        ("union-code", "echoUnion", (t.Shape(code=-(2**63)),)),
        ("everything", "echoEverything", (everything,)),
        ("everything-empty", "echoEverything", (t.Everything(),)),
        ("list", "echoList", ([2**63 - 1, -(2**63), 0],)),
        ("set", "echoSet", ({"x", UNICODE},)),
        ("map", "echoMap", ({"a": [1, 2], UNICODE: []},)),
        ("declared-notfound", "fail", (1,)),
        ("declared-invalid", "fail", (2,)),
        ("application-exception", "fail", (3,)),
        ("no-exception", "fail", (0,)),
        ("binary-1mib", "echoBinary", (bytes(range(256)) * (MIB // 256),)),
        ("big-1mib", "big", (MIB,)),
        ("sizeof-1mib", "sizeOf", (b"\x00" * MIB,)),
    ]
    return batch


def run_batch(client: Any, batch: list[Call], fire_timeout: float = 5.0) -> dict[str, Any]:
    """label -> normalised result (or raised exception) of every call, plus a oneway check.

    The oneway check fires a fresh token and polls ``fired`` until the backend has seen it.
    """
    results: dict[str, Any] = {}
    for label, method, args in batch:
        try:
            results[label] = norm(getattr(client, method)(*args))
        except Exception as exc:  # declared exceptions and TApplicationException are results
            if type(exc).__name__ in ("TTransportException", "ConnectionResetError"):
                raise
            results[label] = ("raised", norm(exc))
    token = f"oneway-{uuid.uuid4().hex}"
    client.fire(token)
    deadline = time.monotonic() + fire_timeout
    while (count := client.fired(token)) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    results["oneway"] = count
    return results


def expected_echoes(batch: list[Call]) -> dict[str, Any]:
    """label -> what an echo call must return (its argument), for the echo calls."""
    return {label: norm(args[0]) for label, method, args in batch if method.startswith("echo")}


# -- clients -----------------------------------------------------------------------------------

STOCK_DIALECTS = (
    "framed-binary",
    "framed-compact",
    "buffered-binary",
    "buffered-compact",
    "buffered-binary-nonstrict",
    "framed-binary-nonstrict",
)
HEADER_DIALECTS = ("header-binary", "header-compact", "header-compact-zlib")


def stock_types(gen_dir: Path) -> Any:
    """The generated ``ttypes`` module of the stock Python code in ``gen_dir``."""
    if str(gen_dir) not in sys.path:
        sys.path.insert(0, str(gen_dir))
    from interop_gen import ttypes  # type: ignore[import-not-found]  # generated per run

    return ttypes


@contextmanager
def stock_client(
    gen_dir: Path,
    host: str,
    port: int,
    dialect: str,
    service: str | None = None,
    headers: dict[bytes, bytes] | None = None,
) -> Iterator[Any]:
    """A stock Apache Thrift Python client (sync TSocket) speaking ``dialect``.

    ``service``: wrap the protocol in TMultiplexedProtocol with that service name. Header
    dialects use THeaderProtocol (binary or compact inside, optionally zlib, with two info
    headers, plus ``headers``).
    """
    if str(gen_dir) not in sys.path:
        sys.path.insert(0, str(gen_dir))
    from interop_gen import Interop  # type: ignore[import-not-found]  # generated per run
    from thrift.protocol.TBinaryProtocol import TBinaryProtocol
    from thrift.protocol.TCompactProtocol import TCompactProtocol
    from thrift.protocol.THeaderProtocol import THeaderProtocol
    from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
    from thrift.transport.THeaderTransport import (
        THeaderClientType,
        THeaderSubprotocolID,
        THeaderTransformID,
    )
    from thrift.transport.TSocket import TSocket
    from thrift.transport.TTransport import TBufferedTransport, TFramedTransport

    socket = TSocket(host, port)
    socket.setTimeout(10_000)
    protocol: Any
    header_protocol: Any = None
    if dialect.startswith("header-"):
        inner = (
            THeaderSubprotocolID.COMPACT if "compact" in dialect else THeaderSubprotocolID.BINARY
        )
        protocol = header_protocol = THeaderProtocol(socket, [THeaderClientType.HEADERS], inner)
        if dialect.endswith("-zlib"):
            protocol.add_transform(THeaderTransformID.ZLIB)
        transport: Any = protocol.trans
    else:
        framing, encoding = dialect.split("-", 1)
        transport = (TFramedTransport if framing == "framed" else TBufferedTransport)(socket)
        if encoding == "compact":
            protocol = TCompactProtocol(transport)
        else:
            strict = encoding == "binary"
            protocol = TBinaryProtocol(transport, strictRead=strict, strictWrite=strict)
    if service is not None:
        protocol = TMultiplexedProtocol(protocol, service)
    client = Interop.Client(protocol)
    if header_protocol is not None:
        _add_headers_per_call(client, header_protocol, headers or {})
    transport.open()
    try:
        yield client
    finally:
        transport.close()


def _add_headers_per_call(client: Any, header_protocol: Any, extra: dict[bytes, bytes]) -> None:
    """Send two info headers with every call (THeaderTransport clears them on each flush):
    a fresh trace id, which must stay out of the call key, and a tenant; then ``extra``."""

    def wrap(send: Callable[..., Any]) -> Callable[..., Any]:
        def sending(*args: Any) -> Any:
            header_protocol.set_header(b"trace-id", uuid.uuid4().hex.encode())
            header_protocol.set_header(b"tenant", b"interop")
            for key, value in extra.items():
                header_protocol.set_header(key, value)
            return send(*args)

        return sending

    for name in dir(client):
        if name.startswith("send_"):
            setattr(client, name, wrap(getattr(client, name)))


@contextmanager
def thriftpy2_client(host: str, port: int, dialect: str) -> Iterator[Any]:
    """A thriftpy2 client (framed/buffered x binary/compact) built from the IDL at runtime."""
    from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
    from thriftpy2.rpc import make_client
    from thriftpy2.transport import TBufferedTransportFactory, TFramedTransportFactory

    framing, encoding = dialect.split("-", 1)
    protocol = TCompactProtocolFactory() if encoding == "compact" else TBinaryProtocolFactory()
    framer = TFramedTransportFactory() if framing == "framed" else TBufferedTransportFactory()
    client = make_client(
        thriftpy2_module().Interop,
        host,
        port,
        proto_factory=protocol,
        trans_factory=framer,
        timeout=10_000,
    )
    try:
        yield client
    finally:
        client.close()


_THRIFTPY2_MODULE: Any = None


def thriftpy2_module() -> Any:
    """The IDL loaded by thriftpy2 (once per process)."""
    global _THRIFTPY2_MODULE
    if _THRIFTPY2_MODULE is None:
        import thriftpy2

        _THRIFTPY2_MODULE = thriftpy2.load(str(IDL), module_name="interop_thrift")
    return _THRIFTPY2_MODULE
