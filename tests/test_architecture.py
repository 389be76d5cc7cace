"""The packages keep their places (docs/architecture.md): core imports nothing else of ours,
strategies never see training, nothing imports the CLI, no import cycle anywhere (imports inside
functions count), and no module is over 400 lines. Old module names still import their modules."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {
    "apoptosis": ROOT / "apoptosis",
    "apoptosis.strategies": ROOT / "strategies",
    "apoptosis.search": ROOT / "search",
}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module the package installs."""
    modules = {}
    for prefix, root in SOURCES.items():
        for path in root.rglob("*.py"):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            modules[".".join([prefix, *parts])] = path
    return modules


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that ``name`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


GRAPH = {name: _imports(name, path, set(_modules())) for name, path in _modules().items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "root"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return components


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_core_imports_nothing_else_of_ours() -> None:
    upward = {(m, t) for m, targets in GRAPH.items() if _layer(m) == "core" for t in targets if _layer(t) != "core"}
    assert upward == set()


def test_training_leans_on_core_only() -> None:
    outside = {
        (m, t)
        for m, ts in GRAPH.items()
        if _layer(m) == "training"
        for t in ts
        if _layer(t) not in ("core", "training")
    }
    assert outside == set()


def test_strategies_never_see_training_analysis_search_or_cli() -> None:
    forbidden = {"training", "analysis", "search", "cli", "continual"}
    seen = {(m, t) for m, ts in GRAPH.items() if _layer(m) == "strategies" for t in ts if _layer(t) in forbidden}
    assert seen == set()


def test_nothing_imports_the_cli() -> None:
    importers = {(m, t) for m, ts in GRAPH.items() if _layer(m) != "cli" for t in ts if _layer(t) == "cli"}
    assert importers == set()


def test_no_module_over_400_lines() -> None:
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize(
    ("old", "new"),
    [("apoptosis.strategy", "apoptosis.core.strategy"), ("apoptosis.trainer", "apoptosis.training"),
     ("apoptosis.population", "apoptosis.core.population"), ("apoptosis.params", "apoptosis.core.params"),
     ("apoptosis.strategies.lazarus", "apoptosis.strategies.followers.lazarus")],
)  # fmt: skip
def test_old_module_names_import_the_same_modules(old: str, new: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(new)
