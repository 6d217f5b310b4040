"""Every command and config shown in README.md is real: it parses with the real parsers."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib

import pytest
import yaml

from gateway.cli import build_parser
from gateway.config import build_config
from gateway.processes import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
BLOCKS = [
    (lang, textwrap.dedent(body))
    for lang, body in re.findall(r"^ *```(\w*)\n(.*?)^ *```", README, flags=re.S | re.M)
]
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


def test_readme_shows_commands_and_configs() -> None:
    """The README has sh and toml blocks to check (guards the extraction itself)."""
    assert len(commands()) >= 10 and len(toml_blocks()) >= 2
    assert "make demo" in commands() and "make test" in commands()


@pytest.mark.parametrize("block", toml_blocks())
def test_toml_blocks_are_valid_configs(block: str) -> None:
    """Each TOML example loads into a GatewayConfig (placeholders like <port> filled in)."""
    raw = tomllib.loads(block.replace("<port>", "1"))
    build_config(raw, FLAGS)


@pytest.mark.parametrize("line", commands())
def test_commands_parse(line: str) -> None:
    """Each shell command is a real gateway invocation, make target, module or compose call."""
    argv = shlex.split(line)
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
        assert command in ("up", "down", "logs", "run", "ps", "kill"), line
        if command in ("up", "logs", "run", "kill"):
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
        pytest.fail(f"README shows a command no test checks: {line}")
