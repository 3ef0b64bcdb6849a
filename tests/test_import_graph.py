"""The package's import graph: no cycle anywhere, and no import from a lower layer into a higher.

The graph is built from the source text (``ast``), so every import counts: module-level ones,
those inside functions, and those under ``if TYPE_CHECKING:`` alike. The layers, lowest first:

0. ``roomcast.ids``, ``roomcast.errors``: names and errors everything shares;
1. ``roomcast.protocol`` (pure Engine.IO / Socket.IO), ``roomcast.config``, ``roomcast.access``
   (who may read the operator surfaces), ``roomcast.metrics`` (what /metrics shares);
2. ``roomcast.cluster``, ``roomcast.router``: the bus;
3. ``roomcast.discovery``, ``roomcast.emitter``: what finds routers and nodes, what publishes
   without being a node;
4. ``roomcast.node``: the edge node;
5. ``roomcast.cli``;
6. ``roomcast`` itself (its lazy public names) and ``roomcast.__main__``.

A module may import its own layer and the layers below it, never above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import roomcast

ROOT = Path(roomcast.__file__).resolve().parent

LAYERS: list[tuple[str, int]] = [
    ("roomcast.ids", 0),
    ("roomcast.errors", 0),
    ("roomcast.protocol", 1),
    ("roomcast.config", 1),
    ("roomcast.access", 1),
    ("roomcast.metrics", 1),
    ("roomcast.cluster", 2),
    ("roomcast.router", 2),
    ("roomcast.discovery", 3),
    ("roomcast.emitter", 3),
    ("roomcast.node", 4),
    ("roomcast.cli", 5),
    ("roomcast.__main__", 6),
    ("roomcast", 6),
]


def layer_of(module: str) -> int:
    """The layer of ``module`` (its longest listed prefix)."""
    for prefix, layer in LAYERS:
        # The package itself is listed alone: a new top-level module has to be placed.
        if module == prefix or (prefix != "roomcast" and module.startswith(prefix + ".")):
            return layer
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package under ``root``, by dotted name."""
    out: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports, wherever the import statement sits."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name``, mod.
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the package modules it imports."""
    mods = modules(root)
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle() -> None:
    """No module imports itself back through others (TYPE_CHECKING imports included)."""
    assert cycles(graph()) == []


def test_no_import_runs_up_the_layers() -> None:
    """No module imports a module of a higher layer."""
    upward = [
        f"{source} (layer {layer_of(source)}) imports {target} (layer {layer_of(target)})"
        for source, targets in sorted(graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(source)
    ]
    assert upward == []


def test_graph_sees_every_import_form(tmp_path: Path) -> None:
    """Relative, absolute, nested and TYPE_CHECKING imports all make edges; a two-module cycle
    and an upward import are found (guards the tests above against vacuity)."""
    pkg = tmp_path / "roomcast"
    (pkg / "node").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ids.py").write_text("def f():\n    from roomcast.node import a\n")
    (pkg / "node" / "__init__.py").write_text("")
    (pkg / "node" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import X\n"
    )
    (pkg / "node" / "b.py").write_text("from . import a\nimport roomcast.ids\n")
    edges = graph(pkg)
    assert edges["roomcast.node.a"] == {"roomcast.node.b"}
    assert edges["roomcast.node.b"] == {"roomcast.node.a", "roomcast.ids"}
    assert edges["roomcast.ids"] == {"roomcast.node.a"}
    assert cycles(edges) == [["roomcast.ids", "roomcast.node.a", "roomcast.node.b"]]
    assert layer_of("roomcast.node.a") > layer_of("roomcast.ids")


def test_every_module_has_a_layer() -> None:
    """Each module belongs to a layer (a new top-level module must be placed)."""
    names = sorted(modules())
    assert "roomcast.node.server" in names and "roomcast.ids" in names
    assert {name: layer_of(name) for name in names}["roomcast.node.server"] == 4
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("roomcast.newcomer")
