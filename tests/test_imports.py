"""The project's import graph: no cycles, and the server core imports nothing above it.

Every package at the repository root (a folder with __init__.py, or a folder of
modules such as loadgen/) is walked with `ast`, so a new package is checked
without editing this test. Imports inside functions count too: a lazy import
is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Folders at the root that hold no project code.
NOT_PACKAGES = {"tests", "k8s", "tools", "build", "dist"}
# What the server core may never import (DESIGN.md: entry points -> exporters ->
# load generator / training -> server).
ABOVE_SERVER = {"exporters", "loadgen", "loadtest", "training", "bench"}


def project_packages() -> list[str]:
    found = []
    for path in sorted(ROOT.iterdir()):
        if not path.is_dir() or path.name.startswith((".", "_")) or path.name in NOT_PACKAGES:
            continue
        if path.name.endswith(".egg-info"):
            continue
        if (path / "__init__.py").exists() or any(path.glob("*.py")):
            found.append(path.name)
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """Project modules `path` imports (the longest known prefix of each name)."""
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module, path.name == "__init__.py")
            # `from pkg import mod` depends on pkg.mod; `from pkg import name` on pkg.
            names += [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = set()
    for name in names:
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            candidate = ".".join(parts[:n])
            if candidate in known:
                if candidate != module:
                    out.add(candidate)
                break
    return out


def import_graph() -> dict[str, set[str]]:
    files = {
        module_name(p): p
        for pkg in project_packages()
        for p in (ROOT / pkg).rglob("*.py")
        if "_pb2" not in p.name  # generated stubs import only protobuf and grpc
    }
    known = set(files)
    return {m: imports_of(p, m, known) for m, p in files.items()}


def _top(module: str) -> str:
    return module.split(".")[0]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle among modules (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(graph.get(m, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        out.setdefault(_top(m), set()).update(_top(d) for d in deps if _top(d) != _top(m))
    return out


def test_the_walk_sees_the_packages_and_their_imports() -> None:
    packages = project_packages()
    assert {"server", "exporters", "bench"} <= set(packages), packages
    graph = import_graph()
    # A known edge: the KServe adapter runs requests through the data plane.
    assert "server.dataplane" in graph["server.kserve"]
    assert "server" in package_graph(graph)["exporters"]


def test_no_module_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_package_import_cycle() -> None:
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, "packages import each other: " + " -> ".join(cycle or [])


def test_server_imports_nothing_above_it() -> None:
    bad = sorted(
        f"{m} imports {d}"
        for m, deps in import_graph().items()
        if _top(m) == "server"
        for d in deps
        if _top(d) in ABOVE_SERVER
    )
    assert not bad, "server/ must not depend on the packages built on it:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_cycle_finder_finds_what_it_should(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle
