"""Every code block of README.md and docs/*.md is real: it parses with the real parsers.

Each block's language says how it is checked (sh: the commands parse, toml: the config
loads, python: it compiles and its imports resolve, json: it parses, thrift: it matches
the IDL); ```text blocks are output samples and synopses, shown as they are. A block in any
other language, or none, fails: nothing is shown unchecked by accident.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml

from gateway.cli import build_parser
from gateway.config import build_config
from gateway.processes import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def blocks_of(path: Path) -> list[tuple[str, str]]:
    """(language, dedented body) of each fenced block in the file."""
    text = path.read_text()
    found = re.findall(r"^ *```(\w*)\n(.*?)^ *```", text, flags=re.S | re.M)
    return [(lang, textwrap.dedent(body)) for lang, body in found]


# (file relative to the repo, language, body) for every block of every page.
ALL_BLOCKS = [
    (str(path.relative_to(REPO_ROOT)), lang, body)
    for path in PAGES
    for lang, body in blocks_of(path)
]
BLOCKS = [(lang, body) for _, lang, body in ALL_BLOCKS]
CHECKED = ("sh", "toml", "python", "json", "thrift", "text")


def of(lang: str) -> list[object]:
    """The blocks in ``lang``, as pytest params named by their file."""
    return [pytest.param(body, id=where) for where, kind, body in ALL_BLOCKS if kind == lang]


FLAGS = {"listen": "127.0.0.1:0", "backend": "127.0.0.1:1"}


def commands() -> list[str]:
    """Logical command lines of the ```sh blocks (continuations joined, comments dropped)."""
    lines: list[str] = []
    for lang, body in BLOCKS:
        if lang != "sh":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def toml_blocks() -> list[str]:
    return [body for lang, body in BLOCKS if lang == "toml"]


def test_pages_show_commands_and_configs() -> None:
    """README and docs have blocks of every checked kind (guards the extraction itself)."""
    assert len(commands()) >= 10 and len(toml_blocks()) >= 2
    assert "make demo" in commands() and "make test" in commands()
    assert set(CHECKED) <= {lang for lang, _ in BLOCKS}
    readme = blocks_of(REPO_ROOT / "README.md")
    assert {"sh", "toml"} <= {lang for lang, _ in readme}


@pytest.mark.parametrize(("where", "lang"), sorted({(w, lang) for w, lang, _ in ALL_BLOCKS}))
def test_every_block_has_a_checked_language(where: str, lang: str) -> None:
    """Every code block names a language this module checks (or text, shown as is)."""
    assert lang in CHECKED, f"{where}: a ```{lang or '(no language)'} block nothing checks"


@pytest.mark.parametrize("block", of("toml"))
def test_toml_blocks_are_valid_configs(block: str) -> None:
    """Each TOML example loads into a GatewayConfig (placeholders like <port> filled in)."""
    raw = tomllib.loads(block.replace("<port>", "1"))
    build_config(raw, FLAGS)


@pytest.mark.parametrize("line", commands())
def test_commands_parse(line: str) -> None:
    """Each shell command is a real gateway invocation, make target, module or compose call."""
    argv = shlex.split(line)
    if argv[0] == "docker-compose":  # Compose v1 (Debian's docker-compose): the same commands
        argv = ["docker", "compose", *argv[1:]]
    if argv[0] == "gateway":
        build_parser().parse_args(argv[1:])
    elif argv[0] == "make":
        targets = re.findall(r"^([\w-]+):", (REPO_ROOT / "Makefile").read_text(), flags=re.M)
        assert set(argv[1:]) <= set(targets), line
    elif argv[0].endswith("python") and argv[1] == "-m":
        module = argv[2]
        assert importlib.util.find_spec(module) is not None, module
        if module.startswith("benchmarks"):
            return  # running one is a benchmark, not a test; importable is the claim here
        done = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
    elif argv[:2] == ["docker", "compose"]:
        services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
        command = argv[2]
        assert command in ("build", "up", "down", "logs", "run", "ps", "kill"), line
        if command in ("build", "up", "logs", "run", "kill"):
            # Service names are the positional words: after the flags (and, for run, the
            # first one is the service, the rest its command). kill's `-s SIGNAL` takes a value.
            words = argv[3:]
            names = [
                word
                for i, word in enumerate(words)
                if not word.startswith("-") and (i == 0 or words[i - 1] not in ("-s", "--signal"))
            ]
            if command == "run":
                names = names[:1]
                assert names, line
            assert set(names) <= set(services), line
    else:
        pytest.fail(f"the docs show a command no test checks: {line}")


@pytest.mark.parametrize("block", of("json"))
def test_json_blocks_parse(block: str) -> None:
    """Each JSON example is one valid JSON document."""
    json.loads(block)


def python_tree(block: str) -> ast.Module:
    """The block's syntax tree; a snippet that yields (inside a reactor) is read as a body."""
    try:
        compile(block, "<docs>", "exec")
        return ast.parse(block)
    except SyntaxError:
        return ast.parse("def _snippet():\n" + textwrap.indent(block, "    "))


@pytest.mark.parametrize("block", of("python"))
def test_python_blocks_compile_and_import(block: str) -> None:
    """Each Python example compiles, and every name it imports exists where it says."""
    tree = python_tree(block)
    compile(tree, "<docs>", "exec")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom):
            assert node.module is not None and node.level == 0, ast.unparse(node)
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"


def thrift_services(source: str, tmp: Path, name: str) -> dict[str, set[str]]:
    """Service name -> method names of an IDL text, parsed by thriftpy2."""
    thriftpy2 = pytest.importorskip("thriftpy2")
    path = tmp / f"{name}.thrift"
    path.write_text(source)
    module = thriftpy2.load(str(path), module_name=f"{name}_thrift")
    return {
        service: set(getattr(module, service).thrift_services)
        for service in dir(module)
        if hasattr(getattr(module, service), "thrift_services")
    }


@pytest.mark.parametrize("block", of("thrift"))
def test_thrift_blocks_match_the_idl(block: str, tmp_path: Path) -> None:
    """Each IDL example parses, and its services have exactly the methods of idl/*.thrift."""
    shown = thrift_services(block, tmp_path, "shown")
    real: dict[str, set[str]] = {}
    for idl in sorted((REPO_ROOT / "idl").glob("*.thrift")):
        real.update(thrift_services(idl.read_text(), tmp_path, idl.stem))
    assert shown and {name: real.get(name) for name in shown} == shown
