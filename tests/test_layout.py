"""The package layout stays readable: no import circles, no product code on test helpers, and
every package's docstring says what it may import, truthfully.

Method: each file is parsed with :mod:`ast` (nothing is imported). Every ``import`` and
``from ... import`` statement counts wherever it is: at module level, inside a function (a
lazy import) or under ``if TYPE_CHECKING:``, since each of those still ties the two modules
together for a reader and for mypy. A name is resolved to the longest gateway module it
starts with (``from gateway.redis.url import RedisURL`` -> ``gateway.redis.url``; relative
imports from their package). Circles are the strongly connected components of that graph
with more than one module, found with Tarjan's algorithm.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from gateway.processes import REPO_ROOT

GATEWAY = REPO_ROOT / "gateway"
PRODUCT_DIRS = ("gateway", "clients", "benchmarks")
TEST_ONLY = "gateway.testing"  # in-memory doubles: only tests import them
GENERATED = GATEWAY / "examples" / "gen"  # thrift-compiler output, no docstring of ours


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def gateway_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(GATEWAY.rglob("*.py"))}


def imported_names(path: Path) -> Iterator[str]:
    """Every dotted name an import statement in ``path`` names, anywhere in the file."""
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # ``from a.b import c`` names a.b.c (a module, else resolved down to a.b).
            yield from (f"{base}.{alias.name}" for alias in node.names)


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    modules = gateway_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for imported in imported_names(path):
            target = resolve(imported, modules)
            if target is not None and target != name:
                graph[name].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_circle() -> None:
    """The SCC search reports a two-module circle and a three-module one, and no acyclic part."""
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": set(), "d": {"e"}, "e": {"f"}, "f": {"d", "c"}}
    assert sorted(strongly_connected(graph)) == [["a", "b"], ["d", "e", "f"]]


def test_no_import_circles_among_gateway_modules() -> None:
    """No gateway module imports, even lazily or for typing only, a module that imports it back."""
    assert strongly_connected(import_graph()) == []


def test_no_product_module_imports_test_helpers() -> None:
    """Nothing in gateway/, clients/ or benchmarks/ imports gateway.testing or tests' modules."""
    test_modules = {"tests", "conftest"} | {p.stem for p in (REPO_ROOT / "tests").glob("*.py")}
    offenders = []
    for top in PRODUCT_DIRS:
        for path in sorted((REPO_ROOT / top).rglob("*.py")):
            if module_name(path) == TEST_ONLY:
                continue
            for name in imported_names(path):
                on_doubles = name == TEST_ONLY or name.startswith(f"{TEST_ONLY}.")
                if on_doubles or name.partition(".")[0] in test_modules:
                    offenders.append((str(path.relative_to(REPO_ROOT)), name))
    assert offenders == []


MAY_IMPORT = re.compile(r"^May import: (.*?)(?:\n\n|\Z)", re.MULTILINE | re.DOTALL)
MODULE_REF = re.compile(r"\b(?:gateway|clients)(?:\.\w+)*")


def packages() -> list[Path]:
    return [
        p.parent
        for p in sorted(GATEWAY.glob("*/__init__.py"))
        if not p.parent.is_relative_to(GENERATED)
    ]


def allowed_imports(package: Path) -> list[str]:
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    match = MAY_IMPORT.search(doc)
    assert match, f"{package.name}/__init__.py: no 'May import:' paragraph in its docstring"
    return MODULE_REF.findall(match.group(1))


def test_every_package_docstring_states_what_it_may_import() -> None:
    """Each gateway package's docstring has a 'May import:' paragraph, and every gateway (or
    clients) module its files import is in the package itself or named there."""
    assert {p.name for p in packages()} >= {"cluster", "redis", "ops", "thrift", "proxy"}
    for package in packages():
        own = module_name(package / "__init__.py")
        allowed = allowed_imports(package)
        for path in sorted(package.rglob("*.py")):
            if path.is_relative_to(GENERATED):
                continue
            for name in imported_names(path):
                if not re.match(r"(gateway|clients)\.", name):
                    continue
                if name == own or name.startswith(f"{own}."):
                    continue
                assert any(name == a or name.startswith(f"{a}.") for a in allowed), (
                    f"{path.relative_to(REPO_ROOT)} imports {name}, which {own}'s docstring "
                    f"does not list under 'May import:' {allowed}"
                )
