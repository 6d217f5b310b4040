"""Wrongly typed config values are config errors naming the key (issue 16, defect 6).

Unit part: every key of the config schema, given a value of the wrong type, and the issue's
own examples, through :func:`gateway.config.build_config`. Integration part: ``gateway
check-config`` (exit 2, one line) and SIGHUP of running nodes, single- and multi-worker (a
failed reload: the error counter, ``last_reload_successful`` 0, one log line per process).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, build_config
from gateway.configschema import (
    SCHEMA,
    ListOf,
    MapOf,
    Scalar,
    Spec,
    Table,
)
from gateway.processes import (
    ExampleBackend,
    GatewayProcess,
    gateway_cli,
    metric,
    start_example_backend,
    start_gateway,
    wait_for,
)

MINIMAL: dict[str, Any] = {
    "gateway": {"listen": "127.0.0.1:0"},
    "backends": {"default": {"address": "127.0.0.1:9"}},
}

# The issue's examples: (TOML text, the key the error must name).
ISSUE_CASES = [
    ("[methods]\nfoo = 3\n", "methods.foo"),
    ('[gateway]\ndefault_backend = ["a"]\n', "gateway.default_backend"),
    ('[routes]\nX = ["a"]\n', "routes.X"),
    ('[gateway]\nadmin = "127.0.0.1:²"\n', "admin"),
]


def wrong_values(spec: Spec) -> list[object]:
    """Values of types ``spec`` does not accept."""
    if isinstance(spec, Scalar):
        candidates: list[object] = ["text", 3, 2.5, True, [1], {"a": 1}, float("nan")]
        return [v for v in candidates if not spec.accepts(v)]
    if isinstance(spec, ListOf):
        return ["text", 3, {"a": 1}, [wrong_values(spec.item)[0]]]
    return ["text", 3, [1]]


def every_key(spec: Spec, where: str = "") -> Iterator[tuple[str, list[str], Spec]]:
    """(dotted key, path into the document, spec) for every key of the schema, tables
    of user-chosen names (backends, routes, methods) given the name ``x``."""
    if isinstance(spec, Table):
        for key, sub in spec.fields.items():
            dotted = f"{where}.{key}" if where else key
            yield dotted, [key], sub
            for deeper, path, leaf in every_key(sub, dotted):
                yield deeper, [key, *path], leaf
    elif isinstance(spec, MapOf):
        yield f"{where}.x", ["x"], spec.value
        for deeper, path, leaf in every_key(spec.value, f"{where}.x"):
            yield deeper, ["x", *path], leaf


def document_with(path: list[str], value: object) -> dict[str, Any]:
    doc: dict[str, Any] = {k: dict(v) for k, v in MINIMAL.items()}
    doc["backends"] = {"default": dict(MINIMAL["backends"]["default"])}
    table = doc
    for key in path[:-1]:
        table = table.setdefault(key, {})
    table[path[-1]] = value
    return doc


CASES = [
    pytest.param(path, key, value, id=f"{key}={value!r}")
    for key, path, spec in every_key(SCHEMA)
    for value in wrong_values(spec)
]


@pytest.mark.parametrize(("path", "key", "value"), CASES)
def test_every_wrongly_typed_value_is_a_config_error_naming_its_key(
    path: list[str], key: str, value: object
) -> None:
    """Any key of the schema given a value of another type: ConfigError naming that key
    (or, for a list item, the item), never another exception."""
    with pytest.raises(ConfigError) as caught:
        build_config(document_with(path, value), {})
    assert str(caught.value).startswith(key), str(caught.value)


@pytest.mark.parametrize(("text", "key"), ISSUE_CASES)
def test_the_issue_examples_are_config_errors(text: str, key: str) -> None:
    """The values issue 16 found crashing the parser are ConfigErrors naming the key."""
    doc = tomllib.loads(text)
    for table, values in MINIMAL.items():
        doc.setdefault(table, {}).update({k: v for k, v in values.items() if k not in doc[table]})
    with pytest.raises(ConfigError, match=re.escape(key)):
        build_config(doc, {})


@pytest.mark.parametrize("flag", [("--listen", "127.0.0.1:²"), ("--workers", "²")])
def test_unicode_digits_in_flags_are_config_errors(flag: tuple[str, str]) -> None:
    """``²`` passes str.isdigit() but is no port or worker count: a ConfigError."""
    name = flag[0].lstrip("-")
    overrides = {"listen": "127.0.0.1:0", "backend": "127.0.0.1:9", name: flag[1]}
    with pytest.raises(ConfigError, match=name):
        build_config({}, overrides)


def test_non_finite_numbers_are_config_errors() -> None:
    """TOML's inf and nan are no timeout: ConfigError naming the key."""
    with pytest.raises(ConfigError, match=r"^methods\.m\.timeout: expected a finite int/float"):
        build_config(document_with(["methods", "m", "timeout"], float("inf")), {})


# -- integration: the CLI and SIGHUP --------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(("text", "key"), ISSUE_CASES)
def test_check_config_exits_2_with_one_line(text: str, key: str, tmp_path: Path) -> None:
    """``gateway check-config`` of a wrongly typed value: exit 2, one stderr line naming
    the key, no traceback."""
    path = tmp_path / "gw.toml"
    path.write_text(
        text.replace("[gateway]\n", '[gateway]\nlisten = "127.0.0.1:0"\n')
        + '\n[backends.default]\naddress = "127.0.0.1:9"\n'
    )
    if "[gateway]" not in text:
        path.write_text('[gateway]\nlisten = "127.0.0.1:0"\n' + path.read_text())
    done = subprocess.run(
        gateway_cli("check-config", str(path)), capture_output=True, text=True, timeout=60
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("gateway: config error: "), done.stderr
    assert key in lines[0]


@pytest.fixture(scope="module")
def backend() -> Iterator[ExampleBackend]:
    with start_example_backend() as started:
        yield started


BAD_RELOAD = "[methods]\nfoo = 3\n"


def sighup_bad_file(node: GatewayProcess, path: Path, processes: int) -> list[str]:
    """Rewrite ``path`` with a wrongly typed value, SIGHUP the node by PID, and return the
    reload-failure lines logged once ``processes`` of them are in (plus a quiet spell)."""
    lines = node.process.stderr_lines
    seen = len(lines)
    path.write_text(BAD_RELOAD)
    os.kill(node.pid, signal.SIGHUP)
    wait_for(
        lambda: sum("reload failed" in line for line in lines[seen:]),
        lambda failed: failed >= processes,
        "the reload failed in every process",
    )
    time.sleep(0.5)  # nothing more (no traceback) follows
    return lines[seen:]


@pytest.mark.integration
def test_sighup_with_a_wrongly_typed_value_is_a_failed_reload(
    backend: ExampleBackend, tmp_path: Path
) -> None:
    """SIGHUP of a file with ``[methods] foo = 3``: one log line naming the key, the error
    counted, last_reload_successful 0, and the node still serves."""
    path = tmp_path / "gw.toml"
    path.write_text('[methods.alertSupervisor]\nmode = "passthrough"\n')
    with start_gateway(
        "--config", str(path), backend=backend.address, node_id="typed", admin=True
    ) as node:
        logged = sighup_bad_file(node, path, processes=1)
        assert len(logged) == 1, logged
        expected = "reload failed, keeping the running config: methods.foo: expected table, got 3"
        assert logged[0].endswith(expected)
        assert metric(node.admin_url, "gateway_config_reloads_total", result="error") == 1
        assert metric(node.admin_url, "gateway_config_last_reload_successful") == 0
        assert node.stop() == 0


@pytest.mark.integration
def test_sighup_with_a_wrongly_typed_value_fails_in_every_worker(
    backend: ExampleBackend, tmp_path: Path
) -> None:
    """The same with two workers: each logs one line, the node's error count is 2 and its
    last_reload_successful 0."""
    path = tmp_path / "gw.toml"
    path.write_text('[methods.alertSupervisor]\nmode = "passthrough"\n')
    node = start_gateway(
        "--workers", "2", "--config", str(path),
        backend=backend.address, node_id="typed-wk", admin=True, timeout=60,
    )  # fmt: skip
    try:
        logged = sighup_bad_file(node, path, processes=2)
        failed = [line for line in logged if "reload failed" in line]
        assert len(failed) == 2 and all("methods.foo: expected table" in f for f in failed)
        assert not any("Traceback" in line for line in logged), logged
        wait_for(
            lambda: metric(node.admin_url, "gateway_config_reloads_total", result="error"),
            lambda errors: errors == 2,
            "both workers' failed reloads counted",
        )
        assert metric(node.admin_url, "gateway_config_last_reload_successful") == 0
    finally:
        node.stop()


@pytest.mark.parametrize(
    ("path", "key"),
    [
        (["redis", "max_shared_bytes"], "redis.max_shared_bytes"),
        (["gateway", "drain_timeout"], "gateway.drain_timeout"),
    ],
)
def test_negative_sizes_and_timeouts_are_config_errors(path: list[str], key: str) -> None:
    """A negative max_shared_bytes crashed ``gateway serve`` at start (ClusterOptions raised
    ValueError), a negative drain_timeout was taken as is: both are ConfigErrors now."""
    doc = document_with(path, -1)
    if path[0] == "redis":
        doc["redis"]["url"] = "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: must be >= 0"):
        build_config(doc, {})
