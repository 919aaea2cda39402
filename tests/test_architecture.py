"""What may import what: the import-linter contracts of
pyproject.toml, and no import cycle between modules, checked on every `make test`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("herald.engine", "herald.grammar", "herald.connectors")

# Cycles known to be broken in another step of issue 13: each names who removes it.
KNOWN_CYCLES: set[frozenset[str]] = set()     # none: a cycle is named in the failure


def test_import_contracts():
    """grammar below the engine, connectors through their interface, the engine's
    layers, no cycle between sibling packages: `lint-imports`' report when broken.
    In a process of its own: import-linter reconfigures logging, which would silence the
    loggers of the tests that run after it."""
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_import_cycle_between_modules():
    """Every import counts here, a function body's too (that is where cycles hid);
    type-only imports (`if TYPE_CHECKING:`) run nothing and do not."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None, exclude_type_checking_imports=True)
    cycles = [c for c in _cycles(graph) if frozenset(c) not in KNOWN_CYCLES]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c + [c[0]]) for c in cycles)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """One import cycle for each group of modules that import each other (Tarjan's
    strongly connected components, then a path round each)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(module: str) -> None:          # recursion depth ≤ the number of modules (~70)
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return [_round_trip(graph, sorted(group)) for group in groups]


def _round_trip(graph: grimp.ImportGraph, group: list[str]) -> list[str]:
    """A path from the group's first module back to it, through the group."""
    start = group[0]
    for imported in sorted(graph.find_modules_directly_imported_by(start)):
        if imported in group:
            path = graph.find_shortest_chain(importer=imported, imported=start)
            if path:
                return [start, *path[:-1]]
    return group
