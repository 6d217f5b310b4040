"""The docs site builds with no broken link, and its configuration reference is the loader's.

The reference (docs/configuration.md) has one table per config table, headed
``### `[<table>]` `` with rows ``| `key` | default | meaning |``. A default is a TOML literal
in backticks (its value is checked), ``required`` (leaving it out is an error naming it),
``unset`` (the loaded value is None; a note in parentheses may follow) or ``the host name``.
A default that depends on other keys, e.g. ``required with tls_listen``, is only checked to
be a key the loader accepts. gateway.config.KEYS is the loader's own list of the keys each
table accepts.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.config import KEYS, Address, ConfigError, GatewayConfig, build_config

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"

# The smallest config that has every table, and where in it each table's keys are set.
MINIMAL: dict[str, Any] = {
    "gateway": {"listen": "127.0.0.1:0"},
    "redis": {"url": "redis://127.0.0.1:1/0"},
    "backends": {"b": {"address": "127.0.0.1:1"}},
    "methods": {"m": {}},
}
PLACES = {
    "gateway": ("gateway",),
    "redis": ("redis",),
    "backends.<name>": ("backends", "b"),
    "methods.<name>": ("methods", "m"),
}
WORDS = ("required", "unset", "the host name")  # defaults that are not a literal


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
    reason="mkdocs-material is not installed (pip install -e '.[docs]')",
)
def test_site_builds_strict(tmp_path: Path) -> None:
    """`mkdocs build --strict` succeeds: no broken link or anchor, every page in the nav."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,  # the snippets' base path (README.md) is the repository root
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "configuration" / "index.html").is_file()
    assert (tmp_path / "dashboard.png").is_file()


def reference() -> dict[str, dict[str, str]]:
    """Table name -> key -> default cell, from the reference's ``[table]`` sections."""
    tables: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in REFERENCE.read_text().splitlines():
        heading = re.fullmatch(r"#+ `\[(.+)\]`", line)
        if heading:
            current = tables.setdefault(heading.group(1), {})
        elif line.startswith("#"):
            current = None
        elif current is not None:
            row = re.match(r"\| `([^`]+)` \| ([^|]+?) \|", line)
            if row:
                assert row.group(1) not in current, f"{row.group(1)} documented twice"
                current[row.group(1)] = row.group(2)
    return tables


DOCUMENTED = reference()
ROWS = [(table, key, cell) for table, keys in DOCUMENTED.items() for key, cell in keys.items()]


def config_with(table: str, key: str | None = None, value: object = None) -> dict[str, Any]:
    """MINIMAL with ``key`` of ``table`` set to ``value`` (or removed, for value None)."""
    raw = {name: dict(body) for name, body in MINIMAL.items()}
    raw["backends"] = {"b": dict(MINIMAL["backends"]["b"])}
    raw["methods"] = {"m": {}}
    if key is not None:
        place: dict[str, Any] = raw
        for step in PLACES[table]:
            place = place[step]
        if value is None:
            del place[key]
        else:
            place[key] = value
    return raw


def loaded(config: GatewayConfig, table: str, key: str) -> object:
    """The value ``key`` of ``table`` has in a loaded config, in TOML's terms."""
    if table == "gateway":
        value = getattr(config, key)
    elif table == "redis":
        value = getattr(config.redis, key)
    elif table == "backends.<name>":
        value = getattr(config.backends["b"], key)
    else:
        method = config.methods["m"]
        value = getattr(method.policy if hasattr(method.policy, key) else method, key)
    if isinstance(value, Address):
        return str(value)
    if isinstance(value, frozenset | tuple):
        return sorted(value, key=str)
    return value


def literal(cell: str) -> object:
    """The TOML value of a default cell's leading backticked literal."""
    match = re.match(r"`([^`]+)`", cell)
    assert match, f"default {cell!r} is neither a `literal` nor one of {WORDS}"
    return tomllib.loads(f"v = {match.group(1)}")["v"]


def test_reference_lists_exactly_the_keys_the_loader_accepts() -> None:
    """Each table the loader reads has a reference table with every key it accepts, no other."""
    assert set(DOCUMENTED) == {*PLACES, "routes"} and set(PLACES) == set(KEYS) - {"config"}
    tables = {name.split(".")[0] for name in DOCUMENTED}
    assert tables == set(KEYS["config"])
    for table in PLACES:
        accepted, documented = set(KEYS[table]), set(DOCUMENTED[table])
        assert documented - accepted == set(), f"[{table}]: documented, but the loader refuses"
        assert accepted - documented == set(), f"[{table}]: accepted, but not documented"


def test_keys_are_what_the_loader_accepts() -> None:
    """A key outside KEYS is refused, naming it, in every table."""
    for table in PLACES:
        with pytest.raises(ConfigError, match="unknown key"):
            build_config(config_with(table, "colour", 1), {})
    with pytest.raises(ConfigError, match="unknown key"):
        build_config({**config_with("gateway"), "colour": {}}, {})


@pytest.mark.parametrize(("table", "key", "cell"), ROWS)
def test_documented_default_is_the_real_one(table: str, key: str, cell: str) -> None:
    """A key left out loads as its documented default, and giving that default changes nothing."""
    if table == "routes":
        pytest.skip("[routes] keys are service names: no default")
    assert key in KEYS[table], f"[{table}] {key}: documented, but the loader refuses it"
    base = build_config(config_with(table), {})
    if cell == "required":
        raw = config_with(table, key)
        # Keep the table there (an empty [redis] is no Redis at all), by another key's default.
        other = next(k for k, c in DOCUMENTED[table].items() if c.startswith("`"))
        for_table = raw
        for step in PLACES[table]:
            for_table = for_table[step]
        for_table[other] = literal(DOCUMENTED[table][other])
        with pytest.raises(ConfigError, match=re.escape(key)):
            build_config(raw, {})
    elif cell == "unset" or cell.startswith("unset ("):
        assert loaded(base, table, key) is None
    elif not cell.startswith("`") and cell.split()[0] in ("required", "unset"):
        pass  # conditional (on other keys): accepted is all that can be said here
    elif cell == "the host name":
        assert loaded(base, table, key) == socket.gethostname()
    else:
        default = literal(cell)
        real = loaded(base, table, key)
        assert (type(real), real) == (type(default), default), f"[{table}] {key}"
        explicit = build_config(config_with(table, key, default), {})
        assert explicit == replace(base), f"[{table}] {key} = {cell} is not the default"


def test_readme_links_resolve() -> None:
    """Every relative link of README.md (the front page, outside the site) names a real file."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert len(local) >= 10
    assert [link for link in local if not (ROOT / link).exists()] == []
