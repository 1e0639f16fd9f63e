"""The package's layering, read from the source with ``ast``: every import of every module
under ``replicad/`` (module level, inside functions, under ``TYPE_CHECKING``) is an edge.

Fails on (a) an import cycle between modules, (b) a layer importing a higher layer (or a
sibling of its own rank that the table below does not name), (c) the pure core importing
anything but itself, the standard library, msgpack, blake3, numpy and cryptography. Each failure names the
offending edge(s) with file and line.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "replicad"

# Layer of each top-level part of the package, low -> high. A module may import its own layer
# and any lower rank; the same rank only where SIDEWAYS names the edge.
RANK: dict[str, int] = {
    "replicad": 0,      # the package itself (__version__ only)
    "core": 0,          # pure: state machine, roles, retention, anomaly, manifest, wire, errors, units
    "config": 1,        # the config schema and its loading
    "release": 1,       # which release runs: rules range, a digest of the sources, git commit (reads files)
    "storage": 2,       # chunk store, catalog, durable I/O, fingerprints, image apply/verify
    "consensus": 2,     # the pysyncobj bridge
    "peer": 2,          # peer transport, TLS
    "telemetry": 2,     # metrics, systemd
    "sources": 3,       # snapshot sources
    "site": 4,          # orchestration
    "ops": 5,           # admin API, auth, audit, OpenAPI, the process (composition root)
    "lab": 6,           # demo, local cluster
    "cli": 7,
    "__main__": 8,      # `python -m replicad`
}
# (importing layer, imported module) pairs allowed within one rank.
SIDEWAYS: frozenset[tuple[str, str]] = frozenset({
    ("peer", "replicad.storage.chunkstore"),
    ("consensus", "replicad.storage.durable"),
})
# cryptography: Ed25519 verification of signed commands is part of the pure state machine (no I/O);
# re2: ransom-note patterns of a policy matched in linear time (pure computation)
CORE_THIRD_PARTY = frozenset({"msgpack", "blake3", "numpy", "cryptography", "re2"})


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst} ({self.path}:{self.line})"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> tuple[list[Edge], list[Edge]]:
    """``(edges to replicad modules, edges to anything else)`` of one module."""
    is_pkg = path.name == "__init__.py"
    inner: list[Edge] = []
    outer: list[Edge] = []
    rel = str(path.relative_to(PACKAGE_DIR.parent))

    def add(target: str, line: int) -> None:
        if target == "replicad" or target.startswith("replicad."):
            # the deepest module that exists (an imported name may be a function, not a module)
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != name:
                inner.append(Edge(name, target, rel, line))
        else:
            outer.append(Edge(name, target, rel, line))

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "__future__":
                continue
            add(module, node.lineno)
            for alias in node.names:  # `from pkg import submodule`
                if f"{module}.{alias.name}" in modules:
                    add(f"{module}.{alias.name}", node.lineno)
    return inner, outer


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _graph() -> tuple[dict[str, list[Edge]], dict[str, list[Edge]]]:
    modules = _modules()
    inner: dict[str, list[Edge]] = {}
    outer: dict[str, list[Edge]] = {}
    for name, path in modules.items():
        inner[name], outer[name] = _imports(name, path, modules)
    return inner, outer


def _cycles(graph: dict[str, list[Edge]]) -> list[list[Edge]]:
    """One cycle (as its edges) per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for e in graph.get(v, []):
            if e.dst not in index:
                visit(e.dst)
                low[v] = min(low[v], low[e.dst])
            elif e.dst in on_stack:
                low[v] = min(low[v], index[e.dst])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for comp in components:  # the shortest cycle through the component's first module (BFS)
        start = min(comp)
        came: dict[str, Edge] = {}
        frontier = [start]
        closing: Edge | None = None
        while closing is None:
            nxt = []
            for v in frontier:
                for e in graph[v]:
                    if e.dst == start:
                        closing = e
                        break
                    if e.dst in comp and e.dst not in came:
                        came[e.dst] = e
                        nxt.append(e.dst)
                if closing is not None:
                    break
            frontier = nxt
        path = [closing]
        while path[0].src != start:
            path.insert(0, came[path[0].src])
        out.append(path)
    return out


def test_the_layer_table_names_every_part_of_the_package() -> None:
    unknown = sorted({_layer(m) for m in _modules()} - set(RANK))
    assert not unknown, f"add these to RANK in {__file__}: {unknown}"


def test_no_import_cycle_between_modules() -> None:
    inner, _ = _graph()
    cycles = _cycles(inner)
    assert not cycles, "import cycles:\n" + "\n".join("  " + "\n  ".join(map(str, c)) + "\n" for c in cycles)


def test_no_layer_imports_a_higher_one() -> None:
    inner, _ = _graph()
    bad = []
    for src, edges in inner.items():
        for e in edges:
            a, b = _layer(src), _layer(e.dst)
            if a == b or RANK[b] < RANK[a] or (a, e.dst) in SIDEWAYS:
                continue
            bad.append(f"{e}: layer {a} (rank {RANK[a]}) may not import layer {b} (rank {RANK[b]})")
    assert not bad, "layering violations:\n  " + "\n  ".join(bad)


def test_the_core_imports_only_itself_the_stdlib_and_pure_libraries() -> None:
    _, outer = _graph()
    bad = [str(e) for src, edges in outer.items() if _layer(src) in ("core", "replicad") for e in edges
           if e.dst.split(".")[0] not in sys.stdlib_module_names | CORE_THIRD_PARTY]
    assert not bad, "the core imports I/O libraries:\n  " + "\n  ".join(bad)


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": [Edge("a", "b", "a.py", 1)], "b": [Edge("b", "c", "b.py", 2)], "c": [Edge("c", "a", "c.py", 3)],
             "d": [Edge("d", "a", "d.py", 4)]}
    (cycle,) = _cycles(graph)
    assert [str(e) for e in cycle] == ["a -> b (a.py:1)", "b -> c (b.py:2)", "c -> a (c.py:3)"]
