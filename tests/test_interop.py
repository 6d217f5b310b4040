"""Interop matrix: Thrift stacks the project did not write, through a real ``gateway serve``.

Backends (tests/interop_backend.py, real processes): stock Apache Thrift Python and thriftpy2,
each in every transport/protocol configuration it has (stock: framed/buffered x
binary/compact, header, multiplexed). Clients: stock Apache Thrift Python (sync TSocket),
thriftpy2, and where their toolchains are present Apache Thrift C++ and the npm ``thrift``
package. Every row makes the same batch of calls (tests/interop_support.py: every Thrift type,
extremes, NaN/inf/-0.0, unicode, non-UTF-8 binary, nested containers, unions, enums, unset
optionals, declared exceptions, a TApplicationException, oneway, void, 1 MiB each way) through
the gateway and compares each reply with the same call made directly to the backend.

Processes are shared by the whole module (module-scoped fixtures: one gateway in front of
every backend configuration, the THeader one included as ``transport = "header"``), and the
C++ and Node.js clients run once each over every target.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from interop_support import (
    DRIVERS,
    HEADER_DIALECTS,
    STOCK_DIALECTS,
    NpmUnavailable,
    build_cpp_client,
    calls,
    cpp_missing,
    expected_echoes,
    generate,
    install_node_thrift,
    node_missing,
    run_batch,
    stock_client,
    stock_types,
    thrift_compiler,
    thriftpy2_client,
    thriftpy2_module,
)

from gateway.processes import GatewayProcess, ManagedProcess, start_gateway, start_process

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
BACKEND_LINE = re.compile(r"interop-backend (\S+) listening on (\S+):(\d+)")
NO_COMPILER = "needs the thrift compiler (Debian thrift-compiler) to generate the stock client"
STOCK_BACKENDS = [f"thrift-{d}" for d in STOCK_DIALECTS[:4]]
THRIFTPY2_BACKENDS = [f"thriftpy2-{d}" for d in STOCK_DIALECTS[:4]]
THRIFTPY2_DIALECTS = STOCK_DIALECTS[:4]
# thriftpy2 decodes set<T> as a Python list, so these echoes come back as lists, not sets.
THRIFTPY2_SET_LABELS = {"everything", "set"}


def _backend_name(config: str) -> str:
    """The gateway's name (and multiplexed route) for a backend configuration."""
    return config.replace("-", "_")


# -- processes -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gen_py(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """Stock Python code generated from the interop IDL (None without the compiler)."""
    if thrift_compiler() is None:
        return None
    return generate("py", tmp_path_factory.mktemp("interop-py"))


def _start_backend(argv: list[str]) -> ManagedProcess:
    process = start_process(
        [sys.executable, str(Path(__file__).parent / "interop_backend.py"), *argv]
    )
    return process


@pytest.fixture(scope="module")
def backend_processes(gen_py: Path | None) -> Iterator[dict[str, ManagedProcess]]:
    """The backend process of each stack, "thriftpy2" and (with the compiler) "thrift", ready
    (both stopped by PID)."""
    processes = {"thriftpy2": _start_backend(["thriftpy2"])}
    if gen_py is not None:
        processes["thrift"] = _start_backend(["thrift", str(gen_py)])
    try:
        for process in processes.values():
            process.wait_for_line(r"^interop-backend ready$", timeout=30)
        yield processes
    finally:
        for process in processes.values():
            process.stop()


@pytest.fixture(scope="module")
def backends(backend_processes: dict[str, ManagedProcess]) -> dict[str, int]:
    """Backend configuration -> loopback port, for both stacks."""
    ports: dict[str, int] = {}
    for process in backend_processes.values():
        for line in process.stdout_lines:
            if match := BACKEND_LINE.match(line):
                ports[match.group(1)] = int(match.group(3))
    return ports


def _default_backend(backends: dict[str, int]) -> str:
    return (
        "thrift-framed-binary" if "thrift-framed-binary" in backends else "thriftpy2-framed-binary"
    )


def gateway_config(backends: dict[str, int]) -> str:
    """A gateway config: one backend per configuration, each reachable as a multiplexed service
    of its own name; plain calls go to the default backend, "Interop:..." to the multiplexed one."""
    lines = ["[gateway]", f'default_backend = "{_backend_name(_default_backend(backends))}"', ""]
    routes = []
    tables: dict[str, dict[str, Any]] = {}
    for config, port in backends.items():
        transport, protocol = ("framed", "binary")
        if config == "thrift-header":
            transport = "header"
        elif config != "thrift-multiplexed":
            transport, protocol = config.split("-")[1:3]
        table: dict[str, Any] = {
            "address": f"{HOST}:{port}",
            "transport": transport,
            "protocol": protocol,
            "connections": 2,
        }
        if config == "thrift-multiplexed":
            table |= {"multiplexed": True, "service": "Interop"}
            routes.append('Interop = "thrift_multiplexed"')
        else:
            routes.append(f'{_backend_name(config)} = "{_backend_name(config)}"')
        tables[_backend_name(config)] = table
    for name, table in tables.items():
        lines.append(f"[backends.{name}]")
        for key, value in table.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, int):
                lines.append(f"{key} = {value}")
            else:
                lines.append(f'{key} = "{value}"')
        lines.append("")
    lines += ["[routes]", *routes, "", '[methods."*"]', "timeout = 10", ""]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def gateway(
    backends: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """One ``gateway serve`` in front of every backend configuration (stopped by PID)."""
    config = tmp_path_factory.mktemp("interop-gateway") / "gateway.toml"
    config.write_text(gateway_config(backends))
    node = start_gateway(config=config, node_id="interop")
    try:
        yield node
    finally:
        node.stop()


# -- comparisons ----------------------------------------------------------------------------------


def assert_same(direct: dict[str, Any], through: dict[str, Any]) -> None:
    """Every call answered through the gateway exactly as the backend answered it directly."""
    differing = sorted(
        label for label in direct.keys() | through.keys() if direct.get(label) != through.get(label)
    )
    assert not differing, {
        label: (direct.get(label), through.get(label)) for label in differing[:5]
    }


_DIRECT: dict[tuple[str, ...], dict[str, Any]] = {}


def stock_direct(
    gen: Path, backends: dict[str, int], config: str, dialect: str, service: str | None = None
) -> dict[str, Any]:
    """The stock client's batch made directly to backend ``config`` (memoised per module run)."""
    key = ("stock", config, dialect, service or "")
    if key not in _DIRECT:
        batch = calls(stock_types(gen))
        with stock_client(gen, HOST, backends[config], dialect, service) as client:
            _DIRECT[key] = run_batch(client, batch)
        expected = expected_echoes(batch)
        wrong = {k: _DIRECT[key][k] for k in expected if _DIRECT[key][k] != expected[k]}
        assert not wrong, f"the backend {config} itself did not echo: {wrong}"
    return _DIRECT[key]


def stock_through(
    gen: Path, gateway: GatewayProcess, dialect: str, service: str | None = None
) -> dict[str, Any]:
    with stock_client(gen, gateway.host, gateway.port, dialect, service) as client:
        return run_batch(client, calls(stock_types(gen)))


def _need_stock(gen_py: Path | None) -> Path:
    if gen_py is None:
        pytest.skip(NO_COMPILER)
    return gen_py


# -- stock Apache Thrift Python ------------------------------------------------------------------


@pytest.mark.parametrize("dialect", STOCK_DIALECTS)
def test_stock_client_through_gateway(
    gen_py: Path | None, backends: dict[str, int], gateway: GatewayProcess, dialect: str
) -> None:
    """A stock Python client in each framed/buffered dialect gets the backend's own answers."""
    gen = _need_stock(gen_py)
    direct = stock_direct(gen, backends, "thrift-framed-binary", "framed-binary")
    assert_same(direct, stock_through(gen, gateway, dialect))


@pytest.mark.parametrize("dialect", HEADER_DIALECTS)
def test_stock_header_client_through_gateway(
    gen_py: Path | None, backends: dict[str, int], gateway: GatewayProcess, dialect: str
) -> None:
    """A stock THeaderProtocol client (binary, compact, compact + zlib, info headers) gets the
    backend's own answers."""
    gen = _need_stock(gen_py)
    direct = stock_direct(gen, backends, "thrift-framed-binary", "framed-binary")
    assert_same(direct, stock_through(gen, gateway, dialect))


@pytest.mark.parametrize("dialect", HEADER_DIALECTS)
def test_stock_header_client_directly(
    gen_py: Path | None, backends: dict[str, int], dialect: str
) -> None:
    """The THeader rows' client works: against the stock THeader server it gets the framed
    client's answers (so an xfail above is the gateway's, not the client's)."""
    gen = _need_stock(gen_py)
    direct = stock_direct(gen, backends, "thrift-framed-binary", "framed-binary")
    assert_same(direct, stock_direct(gen, backends, "thrift-header", dialect))


def test_stock_multiplexed_client_through_gateway(
    gen_py: Path | None, backends: dict[str, int], gateway: GatewayProcess
) -> None:
    """A TMultiplexedProtocol client reaches a TMultiplexedProcessor backend through the gateway."""
    gen = _need_stock(gen_py)
    direct = stock_direct(gen, backends, "thrift-multiplexed", "framed-binary", "Interop")
    assert_same(direct, stock_through(gen, gateway, "framed-binary", "Interop"))


@pytest.mark.parametrize("config", STOCK_BACKENDS + THRIFTPY2_BACKENDS)
def test_upstream_configuration(
    gen_py: Path | None, backends: dict[str, int], gateway: GatewayProcess, config: str
) -> None:
    """Every upstream transport/protocol of both backend stacks answers through the gateway as
    it answers a client of its own dialect directly."""
    gen = _need_stock(gen_py)
    direct = stock_direct(gen, backends, config, config.split("-", 1)[1])
    assert_same(direct, stock_through(gen, gateway, "framed-binary", _backend_name(config)))


@pytest.mark.parametrize("dialect", ["framed-binary", "header-compact-zlib"])
def test_header_upstream_configuration(
    gen_py: Path | None, backends: dict[str, int], gateway: GatewayProcess, dialect: str
) -> None:
    """A THeader backend (``transport = "header"``) answers a framed or a THeader client through
    the gateway as it answers a THeader client directly."""
    gen = _need_stock(gen_py)
    direct = stock_direct(gen, backends, "thrift-header", "header-binary")
    assert_same(direct, stock_through(gen, gateway, dialect, "thrift_header"))


def test_header_upstream_gets_the_callers_info_headers(
    gen_py: Path | None,
    backend_processes: dict[str, ManagedProcess],
    gateway: GatewayProcess,
) -> None:
    """A THeader caller's info headers (trace id included) reach a THeader backend with its
    call."""
    gen = _need_stock(gen_py)
    probe = uuid.uuid4().hex
    with stock_client(
        gen,
        gateway.host,
        gateway.port,
        "header-binary",
        "thrift_header",
        {b"probe": probe.encode()},
    ) as client:
        assert client.echoString("headers") == "headers"
    line = backend_processes["thrift"].wait_for_line(rf"interop-backend headers .*probe={probe}")
    assert "tenant=interop" in line.string and re.search(r"trace-id=[0-9a-f]{32}", line.string)


# -- thriftpy2 ------------------------------------------------------------------------------------


_THRIFTPY2_DIRECT: dict[str, Any] = {}


@pytest.mark.parametrize("dialect", THRIFTPY2_DIALECTS)
def test_thriftpy2_client_through_gateway(
    backends: dict[str, int], gateway: GatewayProcess, dialect: str
) -> None:
    """A thriftpy2 client in each dialect gets the backend's own answers through the gateway."""
    batch = calls(thriftpy2_module())
    default = _default_backend(backends)
    if not _THRIFTPY2_DIRECT:
        with thriftpy2_client(HOST, backends[default], "framed-binary") as client:
            _THRIFTPY2_DIRECT.update(run_batch(client, batch))
        expected = expected_echoes(batch)
        wrong = {
            k: v
            for k, v in expected.items()
            if k not in THRIFTPY2_SET_LABELS and _THRIFTPY2_DIRECT[k] != v
        }
        assert not wrong, f"the backend itself did not echo: {wrong}"
    with thriftpy2_client(gateway.host, gateway.port, dialect) as client:
        through = run_batch(client, batch)
    assert_same(_THRIFTPY2_DIRECT, through)


# -- C++ and Node.js: one run each over every target ----------------------------------------

CPP_DIALECTS = ["framed-binary", "framed-compact", "buffered-binary", "buffered-compact"]
CPP_HEADER_DIALECTS = ["header-binary", "header-compact-zlib"]


def _parse_driver_output(stdout: str) -> dict[str, dict[str, str]]:
    """target label -> call -> result text, from "LABEL CALL RESULT" lines."""
    results: dict[str, dict[str, str]] = {}
    for line in stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3:
            results.setdefault(parts[0], {})[parts[1]] = parts[2]
    return results


def _targets(backends: dict[str, int], gateway: GatewayProcess, dialects: list[str]) -> list[str]:
    default = backends[_default_backend(backends)]
    argv = ["direct", HOST, str(default), "framed-binary"]
    for dialect in dialects:
        argv += [f"gw-{dialect}", gateway.host, str(gateway.port), dialect]
    return argv


@pytest.fixture(scope="module")
def cpp_results(backends: dict[str, int], gateway: GatewayProcess) -> dict[str, dict[str, str]]:
    """Results of the C++ client, run once: direct, through the gateway in every dialect, and
    THeader directly against the stock THeader server."""
    if (missing := cpp_missing()) is not None:
        pytest.skip(f"C++ client: {missing}")
    binary = build_cpp_client()
    argv = _targets(backends, gateway, CPP_DIALECTS + CPP_HEADER_DIALECTS)
    if "thrift-header" in backends:
        for dialect in CPP_HEADER_DIALECTS:
            argv += [f"direct-{dialect}", HOST, str(backends["thrift-header"]), dialect]
    done = subprocess.run(
        [str(binary), *argv], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and done.stdout.endswith("done\n"), done.stderr[-2000:]
    return _parse_driver_output(done.stdout)


@pytest.mark.parametrize("dialect", CPP_DIALECTS + CPP_HEADER_DIALECTS)
def test_cpp_client_through_gateway(cpp_results: dict[str, dict[str, str]], dialect: str) -> None:
    """An Apache Thrift C++ client in each dialect gets the backend's own answers."""
    assert len(cpp_results["direct"]) > 30
    assert_same(cpp_results["direct"], cpp_results[f"gw-{dialect}"])


@pytest.mark.parametrize("dialect", CPP_HEADER_DIALECTS)
def test_cpp_header_client_directly(
    cpp_results: dict[str, dict[str, str]], backends: dict[str, int], dialect: str
) -> None:
    """The C++ THeader client works against the stock Python THeader server."""
    if "thrift-header" not in backends:
        pytest.skip(NO_COMPILER)
    assert_same(cpp_results["direct"], cpp_results[f"direct-{dialect}"])


@pytest.fixture(scope="module")
def js_results(
    backends: dict[str, int], gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, str]]:
    """Results of the Node.js client, run once: direct and through the gateway per dialect."""
    if (missing := node_missing()) is not None:
        pytest.skip(f"Node.js client: {missing}")
    try:
        modules = install_node_thrift()
    except NpmUnavailable as exc:
        pytest.skip(f"Node.js client: {exc}")
    gen = generate("js:node", tmp_path_factory.mktemp("interop-js"))
    done = subprocess.run(
        [
            "node",
            str(DRIVERS / "js_client.js"),
            str(gen),
            *_targets(backends, gateway, CPP_DIALECTS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NODE_PATH": str(modules)},
    )
    assert done.returncode == 0 and done.stdout.endswith("done\n"), done.stderr[-2000:]
    return _parse_driver_output(done.stdout)


@pytest.mark.parametrize("dialect", CPP_DIALECTS)
def test_js_client_through_gateway(js_results: dict[str, dict[str, str]], dialect: str) -> None:
    """A Node.js (npm thrift) client in each dialect gets the backend's own answers."""
    assert len(js_results["direct"]) > 30
    assert_same(js_results["direct"], js_results[f"gw-{dialect}"])
