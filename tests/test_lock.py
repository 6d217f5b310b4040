"""The locks cover what pyproject.toml asks for: every dependency of each group is pinned
exactly, with hashes, in the lock `make` installs that group from (a pyproject change
without `make lock` fails here, not on a newcomer's machine)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# lock file -> the pyproject groups it must hold (see the Makefile's `lock` target)
LOCKS = {
    "runtime.txt": ["dependencies"],
    "test.txt": ["dependencies", "test", "dev", "docs"],
    "bench.txt": ["dependencies", "test", "dev", "docs", "bench"],
    "fuzz.txt": ["dependencies", "test", "dev", "fuzz"],
}
_PIN = re.compile(
    r"^([A-Za-z0-9_.\-]+)==(\S+) \\\n((?:\s+--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", re.M
)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(group: str) -> list[str]:
    reqs = (
        PROJECT["dependencies"]
        if group == "dependencies"
        else PROJECT["optional-dependencies"][group]
    )
    return [_norm(re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0]) for req in reqs]


def _pinned(lock: str) -> dict[str, str]:
    text = (ROOT / "requirements" / lock).read_text()
    return {_norm(name): version for name, version, _ in _PIN.findall(text)}


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_dependency_is_pinned_with_hashes(lock: str) -> None:
    """Each dependency of the lock's groups is pinned ``==`` with sha256 hashes in it."""
    pinned = _pinned(lock)
    wanted = {name for group in LOCKS[lock] for name in _requirements(group)}
    assert wanted - set(pinned) == set(), f"{lock}: not pinned (run make lock)"


def test_locks_agree_on_versions() -> None:
    """A package pinned in two locks has one version (bench and fuzz are made against
    test.txt), and every line of every lock is a pin with hashes or a comment."""
    seen: dict[str, str] = {}
    for lock in [*LOCKS, "build.txt"]:
        text = (ROOT / "requirements" / lock).read_text()
        for line in text.splitlines():
            assert not line or line.startswith(("#", "    ")) or "==" in line, (lock, line)
        for name, version in _pinned(lock).items():
            assert seen.setdefault(name, version) == version, (lock, name)


def test_make_installs_only_from_the_locks() -> None:
    """The Makefile's install step is hash-checked and takes no dependency on its own."""
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes --no-deps" in makefile
    assert "-r $(LOCK)" in makefile and "LOCK := requirements/test.txt" in makefile
    assert "pip install --quiet --no-deps --no-build-isolation -e ." in makefile
