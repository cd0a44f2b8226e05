"""Import boundaries, read from the source (ast) without importing anything.

Every import counts, also one inside a function (a deferred import hides a cycle from Python
but not from a reader): the project's modules form no cycle; analysis/ reads run records and
imports of bench/ only the record contract (bench/record.py), which imports no other project
module, no torch and no Hydra; bench/ imports neither analysis/ nor experiments/; only the entry
point (bench/run.py), the schema (bench/config.py) and the study runner (experiments/__main__.py,
which composes study configs) import Hydra.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("bench", "analysis", "experiments")
HYDRA_ALLOWED = {"bench.run", "bench.config", "experiments.__main__"}


def module_name(path: Path) -> str:
    """bench/adapters/lora.py -> bench.adapters.lora; bench/adapters/__init__.py -> bench.adapters
    (a package is its __init__)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


SOURCES = {
    module_name(path): path
    for package in PACKAGES
    for path in sorted((ROOT / package).rglob("*.py"))
}


def imports(name: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import statement in module `name`,
    relative imports made absolute."""
    path = SOURCES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from .x import y: x relative to this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append((base, [alias.name for alias in node.names], node.lineno))
    return found


def project_targets(module: str, names: list[str]) -> set[str]:
    """The project modules an import executes that matter for a cycle.

    `import a.b.c` -> the deepest of a.b.c, a.b, a that is a project module. `from a.b import x`
    -> a.b (a package's __init__) and a.b.x when x is a submodule. Parent packages are not
    added: `bench.adapters.lora` importing `bench.adapters.base` is no cycle with
    `bench.adapters` importing `bench.adapters.lora`."""
    targets = set()
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in SOURCES:
            targets.add(".".join(parts[:end]))
            break
    targets |= {f"{module}.{x}" for x in names if f"{module}.{x}" in SOURCES}
    return targets


def import_graph() -> dict[str, set[str]]:
    return {
        name: {t for module, names, _ in imports(name) for t in project_targets(module, names)}
        for name in SOURCES
    }


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted: a cycle lies within one."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """start -> ... -> start, fewest edges, through the modules of `within` (breadth first)."""
    parent, frontier = {start: None}, [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & within):
                if w == start:
                    path = [v]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    following.append(w)
        frontier = following
    return []


def test_modules_are_found():
    assert {"bench.run", "bench.config", "bench.adapters", "bench.adapters.lora",
            "analysis.__main__", "experiments"} <= set(SOURCES)


def test_import_resolution_keeps_package_and_submodule_apart():
    assert project_targets("bench.adapters", ["build_adapter"]) == {"bench.adapters"}
    assert project_targets("bench.adapters", ["lora"]) == {"bench.adapters",
                                                           "bench.adapters.lora"}
    assert project_targets("bench.adapters.base", ["Adapter"]) == {"bench.adapters.base"}
    assert project_targets("bench.adapters.nope", []) == {"bench.adapters"}
    assert project_targets("torch.nn", ["Module"]) == set()
    # from .base import X inside bench/manifolds/fixed_rank_quotient.py
    assert ("bench.manifolds.base", ["LowRankManifold"]) in [
        (m, n) for m, n, _ in imports("bench.manifolds.fixed_rank_quotient")]
    # a package's own submodule importing a sibling closes no loop through the package
    graph = {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": set()}
    assert all(len(c) == 1 for c in strongly_connected(graph))
    graph["p.b"] = {"p.a"}
    assert ["p.a", "p.b"] in strongly_connected(graph)
    assert shortest_cycle(graph, "p.a", {"p.a", "p.b"}) == ["p.a", "p.b", "p.a"]


def test_no_import_cycle():
    graph = import_graph()
    cycles = []
    for component in strongly_connected(graph):
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        seen = set()
        for start in component:  # one shortest cycle through each module, each cycle once
            cycle = shortest_cycle(graph, start, set(component))
            if cycle and frozenset(zip(cycle, cycle[1:])) not in seen:
                seen.add(frozenset(zip(cycle, cycle[1:])))
                cycles.append(" -> ".join(cycle))
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def violations(importers: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{SOURCES[name].relative_to(ROOT)}:{line} imports {module}"
        for name in SOURCES
        if name.split(".")[0] == importers
        for module, _, line in imports(name)
        if module.split(".")[0] in forbidden
    ]


def test_analysis_imports_only_the_record_contract_of_bench():
    bad = [v for v in violations("analysis", ("bench", "experiments"))
           if not v.endswith(" imports bench.record")]
    assert not bad, "analysis/ reads run records through bench.record only:\n  " + "\n  ".join(bad)


def test_the_record_contract_depends_on_nothing_heavy():
    heavy = ("torch", "hydra", "omegaconf", "bench", "analysis", "experiments", "numpy", "pandas")
    found = [module for module, _, _ in imports("bench.record") if module.split(".")[0] in heavy]
    assert not found, f"bench/record.py imports {found}"


def test_bench_imports_neither_analysis_nor_experiments():
    bad = violations("bench", ("analysis", "experiments"))
    assert not bad, "bench/ must not import:\n  " + "\n  ".join(bad)


def test_hydra_is_imported_only_by_the_entry_point_and_the_schema():
    bad = [
        f"{SOURCES[name].relative_to(ROOT)}:{line} imports {module}"
        for name in SOURCES
        if name not in HYDRA_ALLOWED
        for module, _, line in imports(name)
        if module.split(".")[0] == "hydra"
    ]
    assert not bad, "hydra outside " + ", ".join(sorted(HYDRA_ALLOWED)) + ":\n  " + "\n  ".join(bad)
