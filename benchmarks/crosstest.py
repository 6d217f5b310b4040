"""Apache Thrift's own cross-test through ``gateway serve``: the suite's test client in every
protocol x transport its ``test/tests.json`` lists, against the suite's test server, in
passthrough, coalesce and cache modes.

The suite is not part of this repository (fetch it, pinned: ``v0.17.0``, and point at it)::

    python -m benchmarks.crosstest /path/to/apache-thrift [--python PY] [--only header]

``/path/to/apache-thrift`` holds at least ``test/py``, ``test/ThriftTest.thrift`` and
``test/tests.json`` of the release (``git archive v0.17.0 test lib/py``). ``--python`` runs the
suite's TestClient/TestServer (default: this interpreter; the Makefile target uses a venv
with the suite's own ``lib/py``, which has the accelerated protocols). Code is generated with
the ``thrift`` compiler on PATH (Debian's thrift-compiler). Prints one line per run and a
markdown matrix at the end; exit status 1 if any run failed.

The gateway speaks binary, compact and THeader, framed, to its backends, so each client
dialect runs against a TestServer the gateway can reach: the server side of the suite's
protocol pair when it is binary, compact or THeader (their multiplexed forms included),
else binary; always ``--transport framed`` (``header`` speaks THeader). What is tested is
the client side: every dialect a client may use, through the gateway.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.processes import GatewayProcess, start_gateway, start_process, wait_for_port

HOST = "127.0.0.1"
MODES = ("passthrough", "coalesce", "cache")
LANGUAGES = ("py", "cpp", "nodejs")
# Transports the gateway does not serve on the client port (reported, not run).
UNSUPPORTED = {"websocket": "WebSocket transport is not served by the gateway"}
# Server protocols the gateway can speak upstream -> its backend (transport, protocol, multiplexed).
_UPSTREAM = {
    "binary": ("framed", "binary", False),
    "compact": ("framed", "compact", False),
    "header": ("header", "binary", False),
    "multi": ("framed", "binary", True),
    "multic": ("framed", "compact", True),
    "multih": ("header", "binary", True),
}


@dataclass(frozen=True)
class Run:
    language: str  # of the client
    server_protocol: str  # the suite's name of the server side
    client_protocol: str
    transport: str
    mode: str

    @property
    def backend(self) -> str:
        """The TestServer protocol used as the gateway's backend for this run."""
        if self.server_protocol in _UPSTREAM:
            return self.server_protocol
        return "multi" if self.client_protocol.startswith("multi") else "binary"

    @property
    def label(self) -> str:
        pair = self.client_protocol
        if self.server_protocol != self.client_protocol:
            pair = f"{self.server_protocol}:{self.client_protocol}"
        return f"{self.language} {pair} {self.transport} {self.mode}"


def matrix(suite: Path, language: str) -> tuple[list[tuple[str, str]], list[str]]:
    """``(protocol pairs (server, client), transports)`` that tests.json lists for
    ``language``'s client (the py servers serve every protocol it names)."""
    entries = json.loads((suite / "test" / "tests.json").read_text())
    entry = next(e for e in entries if e["name"] == language)
    pairs = []
    for proto in [*entry["protocols"], *entry.get("client", {}).get("protocols", [])]:
        server, _, client = proto.partition(":")
        pairs.append((server, client or server))
    return pairs, list(entry["transports"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def generate(suite: Path, out: Path) -> Path:
    """``thrift --gen py`` of the suite's ThriftTest.thrift into ``out/gen-py``."""
    compiler = shutil.which("thrift")
    if compiler is None:
        raise SystemExit("needs the thrift compiler on PATH (Debian thrift-compiler)")
    gen = out / "gen-py"
    gen.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [compiler, "--gen", "py", "-out", str(gen), str(suite / "test" / "ThriftTest.thrift")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return gen


def build_cpp_client(suite: Path, out: Path) -> Path:
    """The suite's test/cpp TestClient, built with g++ against Debian's libthrift-dev (needs
    libboost-program-options-dev, libboost-filesystem-dev, libevent-dev, libssl-dev)."""
    gen = out / "gen-cpp"
    gen.mkdir(parents=True, exist_ok=True)
    idl = suite / "test" / "ThriftTest.thrift"
    compiler = shutil.which("thrift") or "thrift"
    gen_cmd = [compiler, "--gen", "cpp:templates,cob_style", "-out", str(gen), str(idl)]
    subprocess.run(gen_cmd, check=True, capture_output=True, timeout=120)
    src = suite / "test" / "cpp" / "src"
    sources = [src / "TestClient.cpp", src / "ThriftTest_extras.cpp"] + [
        gen / f"{name}.cpp"
        for name in ("SecondService", "ThriftTest", "ThriftTest_types", "ThriftTest_constants")
    ]
    binary = out / "TestClient"
    libs = "thriftnb thriftz thrift event boost_program_options boost_filesystem ssl crypto z"
    build = [
        "g++", "-std=c++17", "-O1", "-w", f"-I{out}", f"-I{gen}", f"-I{src}", "-o", str(binary),
        *map(str, sources), *(f"-l{lib}" for lib in libs.split()), "-lpthread",
    ]  # fmt: skip
    subprocess.run(build, check=True, timeout=900)
    return binary


@contextmanager
def test_server(
    suite: Path,
    python: str,
    gen: Path,
    protocol: str,
    transport: str | None = None,
    ssl: bool = False,
) -> Iterator[int]:
    """The suite's TestServer.py (TSimpleServer) in ``protocol``; yields its port. Without
    ``transport``: as the gateway's backend (framed; THeader frames itself). ``ssl``: TLS
    with the suite's test/keys/server.pem (CN and SAN localhost/127.0.0.1)."""
    port = free_port()
    if transport is None:
        transport = "framed" if _UPSTREAM[protocol][0] == "framed" else "buffered"
    argv = [
        python, "TestServer.py", f"--genpydir={gen}", f"--protocol={protocol}",
        f"--transport={transport}", f"--port={port}", "TSimpleServer",
    ]  # fmt: skip
    if transport == "zlib":
        argv.append("--zlib")
    if ssl:
        argv.append("--ssl")
    process = start_process(argv, cwd=suite / "test" / "py", env=_client_env("py"))
    try:
        wait_for_port(HOST, port, timeout=30)
        yield port
    finally:
        process.stop()


def gateway_config(port: int, backend: str, mode: str, tls: TLS | None = None) -> str:
    transport, protocol, multiplexed = _UPSTREAM[backend]
    lines = ["[gateway]", 'default_backend = "apache"']
    if tls is not None:
        lines += [
            f'tls_listen = "{HOST}:{tls.port}"',
            f'tls_cert = "{tls.keys / "server.crt"}"',
            f'tls_key = "{tls.keys / "server.key"}"',
        ]
    lines += [
        "",
        "[backends.apache]",
        f'address = "{HOST}:{port}"',
        f'transport = "{transport}"',
        f'protocol = "{protocol}"',
        # TSimpleServer serves one connection at a time: a second one would wait forever.
        "connections = 1",
        "max_concurrency = 1",
    ]
    if multiplexed:
        lines += ["multiplexed = true", 'service = "ThriftTest"']
    if tls is not None:  # the TestServer runs with --ssl: its certificate names localhost
        lines += [
            "tls = true",
            f'tls_ca = "{tls.keys / "CA.pem"}"',
            'tls_server_name = "localhost"',
        ]
    lines += ["", '[methods."*"]', f'mode = "{mode}"', "timeout = 20"]
    if mode == "cache":
        lines.append("ttl = 5")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TLS:
    """The gateway's TLS client listener on ``port``, certificates from the suite's
    test/keys (``keys``; they verify with OpenSSL 3: server.crt is signed by CA.pem)."""

    keys: Path
    port: int


@contextmanager
def gateway(
    config_dir: Path, port: int, backend: str, mode: str, tls: TLS | None = None
) -> Iterator[GatewayProcess]:
    config = config_dir / f"gateway-{backend}-{mode}.toml"
    config.write_text(gateway_config(port, backend, mode, tls))
    node = start_gateway(config=config, node_id=f"crosstest-{backend}-{mode}", timeout=30)
    try:
        yield node
    finally:
        node.stop()


_FAILED_TEST = re.compile(r"^(ERROR|FAIL): (\w+)", re.MULTILINE)
_CPP_TEST = re.compile(r"\b(test\w+)")


_NODE_PATH: list[str] = []  # set by prepare_node


_PYTHONPATH: list[str] = []  # set by --pythonpath


def _client_env(language: str) -> dict[str, str] | None:
    if language == "py" and _PYTHONPATH:
        return {**os.environ, "PYTHONPATH": os.pathsep.join(_PYTHONPATH)}
    if language != "nodejs":
        return None
    return {**os.environ, "NODE_PATH": os.pathsep.join(_NODE_PATH)}


def prepare_node(suite: Path, modules: Path | None, scratch: Path) -> list[str]:
    """The Node.js client's argv (lib/nodejs/test/client.js): code generated into the suite's
    scratch tree (gen-nodejs); ``modules`` holds the npm packages it needs (``npm install
    thrift@0.17.0 commander@2.20.3 tape@4.17.0`` there). ``require("thrift")`` is pointed at
    the suite's own lib/nodejs (the test helpers load it by path: two copies of the library
    would not recognise each other's errors)."""
    if modules is None or not (modules / "thrift").exists():
        raise SystemExit("--language nodejs needs --node-modules with thrift, commander, tape")
    shim = scratch / "node-shim" / "thrift"
    shim.mkdir(parents=True, exist_ok=True)
    library = suite / "lib" / "nodejs" / "lib" / "thrift"
    (shim / "index.js").write_text(f"module.exports = require({json.dumps(str(library))});\n")
    _NODE_PATH[:] = [str(shim.parent), str(modules.resolve())]
    test = suite / "lib" / "nodejs" / "test"
    compiler = shutil.which("thrift") or "thrift"
    idl = suite / "test" / "ThriftTest.thrift"
    gen = [compiler, "--gen", "js:node", "-out", str(test / "gen-nodejs"), str(idl)]
    (test / "gen-nodejs").mkdir(exist_ok=True)
    subprocess.run(gen, check=True, capture_output=True, timeout=120)
    return ["node", "client.js", "--type=tcp"]


def run_client(
    suite: Path,
    client: list[str],
    run: Run,
    node: GatewayProcess | None,
    timeout: float,
    port: int = 0,
    ssl: bool = False,
) -> tuple[bool, str]:
    """(passed, why not) of one TestClient run (``client``: its argv before the options)
    through ``node`` (None: directly to the TestServer on ``port``; a ``port`` with a node:
    its TLS listener). ``ssl``: the client connects with ``--ssl``."""
    if run.transport in UNSUPPORTED:
        return False, UNSUPPORTED[run.transport]
    argv = [*client,
        f"--host={HOST}", f"--port={port or (node.port if node else 0)}",
        f"--protocol={run.client_protocol}", f"--transport={run.transport}",
    ]  # fmt: skip
    if run.transport == "zlib":
        argv.append("--zlib")
    if ssl:
        argv.append("--ssl")
    lines = [] if node is None else node.process.stdout_lines + node.process.stderr_lines
    seen = len(lines)
    try:
        done = subprocess.run(
            argv,
            cwd=suite / ("lib/nodejs/test" if run.language == "nodejs" else "test/py"),
            env=_client_env(run.language),
            capture_output=True,
            text=True,
            errors="replace",  # the C++ client prints binary values raw
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False, f"client timed out after {timeout:g}s"
    if done.returncode == 0:
        return True, ""
    failed = [name for _, name in _FAILED_TEST.findall(done.stderr)]
    if run.language == "cpp":  # "testI32(...) ... *** FAILED ***" and the like, on stdout
        output = done.stdout + done.stderr
        failed = sorted(
            {m for line in output.splitlines() if "FAIL" in line for m in _CPP_TEST.findall(line)}
        )
    if run.language == "nodejs":  # tape: "not ok 12 testI32"
        failed = [
            line[7:].strip() for line in done.stdout.splitlines() if line.startswith("not ok")
        ]
    log = [] if node is None else (node.process.stdout_lines + node.process.stderr_lines)[seen:]
    closing = [line.split("closing client", 1)[-1] for line in log if "closing client" in line]
    why = f"{len(failed)} tests failed ({', '.join(failed[:4])})" if failed else "client error"
    if closing:
        why += f"; gateway: {closing[0].strip()[:120]}"
    elif not failed:
        why += ": " + (done.stderr.strip().splitlines() or ["?"])[-1][:160]
    return False, why


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", type=Path, help="the Apache Thrift tree (test/py, test/*.json)")
    parser.add_argument("--python", default=sys.executable, help="runs TestClient/TestServer")
    parser.add_argument("--language", choices=LANGUAGES, default="py", help="of the client")
    parser.add_argument("--node-modules", type=Path, help="npm packages for the Node.js client")
    parser.add_argument(
        "--cpp-client", type=Path, help="test/cpp's TestClient, built (default: build it)"
    )
    parser.add_argument("--only", default="", help="run only protocols containing this")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--transports", default="", help="comma-separated (default: all listed)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per client run")
    parser.add_argument("--markdown", type=Path, help="also write the matrix here")
    parser.add_argument(
        "--ssl",
        action="store_true",
        help="TLS both ways: client --ssl to the gateway's tls_listen, gateway to TestServer --ssl",
    )
    parser.add_argument(
        "--pythonpath",
        default="",
        help="PYTHONPATH of the suite's TestServer/TestClient (--ssl: a dir holding the suite's "
        "lib/py/src as thrift, and six; thrift 0.25's TSSLSocket wants ca_certs even unverified)",
    )
    parser.add_argument(
        "--no-direct", action="store_true", help="skip the reference runs without the gateway"
    )
    args = parser.parse_args(argv)
    suite: Path = args.suite.resolve()
    if not (suite / "test" / "py" / "TestClient.py").exists():
        raise SystemExit(f"{suite} has no test/py/TestClient.py (the Apache Thrift suite)")
    language: str = args.language
    _PYTHONPATH[:] = [part for part in args.pythonpath.split(os.pathsep) if part]
    pairs, transports = matrix(suite, language)
    runs = [
        Run(language, server, client, transport, mode)
        for mode in args.modes.split(",")
        for server, client in pairs
        if args.only in f"{server}:{client}"
        for transport in transports
        if not args.transports or transport in args.transports.split(",")
    ]
    results: dict[Run, tuple[bool, str]] = {}
    with tempfile.TemporaryDirectory(prefix="crosstest-") as scratch:
        gen = generate(suite, Path(scratch))
        if language == "nodejs":
            client = prepare_node(suite, args.node_modules, Path(scratch))
        elif language == "cpp":
            binary = args.cpp_client or build_cpp_client(suite, Path(scratch))
            client = [str(binary.resolve())]
        else:
            client = [args.python, "TestClient.py", f"--genpydir={gen}"]
        if not args.no_direct:
            # The reference: each client against a TestServer of its own dialect, no gateway.
            for run in {
                Run(language, r.server_protocol, r.client_protocol, r.transport, "direct")
                for r in runs
            }:
                if run.transport in UNSUPPORTED:
                    results[run] = (False, UNSUPPORTED[run.transport])
                    continue
                with test_server(
                    suite, args.python, gen, run.server_protocol, run.transport, args.ssl
                ) as port:
                    results[run] = run_client(
                        suite, client, run, None, args.timeout, port, args.ssl
                    )
                print(f"{run.label}: {'pass' if results[run][0] else 'FAIL ' + results[run][1]}")
        for backend in sorted({run.backend for run in runs}):
            with test_server(suite, args.python, gen, backend, ssl=args.ssl) as port:
                for mode in args.modes.split(","):
                    mine = [r for r in runs if r.backend == backend and r.mode == mode]
                    if not mine:
                        continue
                    tls = TLS(suite / "test" / "keys", free_port()) if args.ssl else None
                    with gateway(Path(scratch), port, backend, mode, tls) as node:
                        for run in mine:
                            started = time.monotonic()
                            ok, why = run_client(
                                suite, client, run, node, args.timeout,
                                tls.port if tls else 0, args.ssl,
                            )  # fmt: skip
                            results[run] = (ok, why)
                            took = time.monotonic() - started
                            status = "pass" if ok else f"FAIL {why}"
                            print(f"{run.label}: {status} ({took:.1f}s)", flush=True)
    table = render(results)
    print(table)
    if args.markdown is not None:
        args.markdown.write_text(table)
    through = {
        run: result
        for run, result in results.items()
        if run.mode != "direct" and run.transport not in UNSUPPORTED
    }
    passed = sum(ok for ok, _ in through.values())
    print(f"{passed} of {len(through)} runs through the gateway pass")
    # A run that fails without the gateway too is the suite's failure, not the gateway's.
    direct = {
        (r.server_protocol, r.client_protocol, r.transport): ok
        for r, (ok, _) in results.items()
        if r.mode == "direct"
    }
    gateway_failures = [
        run
        for run, (ok, _) in through.items()
        if not ok and direct.get((run.server_protocol, run.client_protocol, run.transport), True)
    ]
    print(f"{len(gateway_failures)} fail through the gateway only")
    return 1 if gateway_failures else 0


def render(results: dict[Run, tuple[bool, str]]) -> str:
    """The matrix as markdown: one row per protocol pair x transport, one column per mode."""
    modes = [m for m in ("direct", *MODES) if any(r.mode == m for r in results)]
    language = next(iter(results)).language if results else "py"
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for run, (ok, why) in results.items():
        pair = run.client_protocol
        if run.server_protocol != run.client_protocol:
            pair = f"{run.server_protocol}:{run.client_protocol}"
        row = rows.setdefault((pair, run.transport), {})
        if run.mode != "direct":
            row["backend"] = run.backend
        if ok:
            row[run.mode] = "pass"
        elif why in UNSUPPORTED.values():
            row[run.mode] = "not run"
        else:
            row[run.mode] = f"**fail**: {why}"
    out = [
        "| language | protocol | transport | backend | " + " | ".join(modes) + " |",
        "|---|---|---|---|" + "---|" * len(modes),
    ]
    for (pair, transport), cells in sorted(rows.items()):
        line = " | ".join(cells.get(mode, "-") for mode in modes)
        backend = cells.get("backend", "-")
        out.append(f"| {language} | {pair} | {transport} | {backend} | {line} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
