"""The package structure docs/architecture.md describes: who may import whom, no import
circle between modules, and small modules in the server, the agent and the core.

Read from the source (``ast``), so a rule holds for every module, imported or not; that
``kernex --help`` loads no server code is run for real in tests/git/test_cli_imports.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("kernex_core", "kernex_git", "kernex_agent", "kernex_server", "kernex_cli")

# package -> the other Kernex packages it may import (docs/architecture.md, "Import rules")
MAY_IMPORT = {
    "kernex_core": set(),
    "kernex_git": {"kernex_core"},
    "kernex_agent": {"kernex_core"},
    "kernex_server": {"kernex_core", "kernex_git"},
    "kernex_cli": {"kernex_core", "kernex_git", "kernex_agent", "kernex_server"},
}
MAX_LINES = 450
SMALL = ("kernex_core", "kernex_agent", "kernex_server")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts or "fleet-repo-template" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(name: str, path: Path, *, top_level_only: bool) -> set[str]:
    """The Kernex modules ``name`` imports. With ``top_level_only``, only the imports run
    when the module loads (not those inside functions or under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("kernex_"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                if base.startswith("kernex_"):
                    found.update(f"{base}.{a.name}" for a in node.names)
                    found.add(base)
            elif isinstance(node, ast.If) and _is_type_checking(node):
                if not top_level_only:
                    visit(node.body)
                visit(node.orelse)
            elif top_level_only and isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            ):
                if isinstance(node, ast.ClassDef):
                    visit(node.body)
            else:
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        visit([child])

    visit(tree.body)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_the_rules_allow(package: str) -> None:
    allowed = MAY_IMPORT[package] | {package}
    wrong = sorted(
        f"{name} imports {target}"
        for name, path in modules().items()
        if name.split(".")[0] == package
        for target in imports(name, path, top_level_only=False)
        if target.split(".")[0] not in allowed
    )
    assert wrong == [], f"{package} may import only {sorted(allowed)}"


def test_no_import_circle_between_modules() -> None:
    found = modules()
    graph = {
        name: {t for t in imports(name, path, top_level_only=True) if t in found and t != name}
        for name, path in found.items()
    }
    # a package's __init__ importing its own modules is how a package is made, not a circle
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(f"{t}.")}
    circles = [sorted(c) for c in _strongly_connected(graph) if len(c) > 1]
    assert circles == []


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                out.append(component)
    return out


def test_modules_of_the_server_agent_and_core_stay_small() -> None:
    over = {
        name: lines
        for name, path in modules().items()
        if name.split(".")[0] in SMALL and (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert over == {}, f"over {MAX_LINES} lines: split along a concept"


def test_the_checks_see_imports_and_circles() -> None:
    found = modules()
    assert {n.split(".")[0] for n in found} == set(PACKAGES)
    app = imports("kernex_server.app", found["kernex_server.app"], top_level_only=True)
    assert {"kernex_server.context", "kernex_git"} <= app
    relative = imports(
        "kernex_core.fleet.load", found["kernex_core.fleet.load"], top_level_only=True
    )
    assert relative
    assert all(t.startswith("kernex_core") for t in relative)
    circles = _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert {"a", "b", "c"} in circles
    assert {"d"} in circles
