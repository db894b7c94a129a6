"""The package's import graph: layers only point down, and no module imports itself back.

Every ``import`` and ``from ... import`` statement counts, wherever it is (module level, inside
functions, under ``TYPE_CHECKING``), and importing ``a.b.c`` also imports the package ``a.b``
(its ``__init__`` runs first), so that edge counts too, except from modules inside ``a.b``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "comptonsky"
ROOT = "comptonsky"

#: Layers from the bottom up; a module may import modules of its own layer or below.
LAYERS = [
    ("base", ["errors", "geometry", "physics", "frames", "regions", "_numba", "provenance"]),
    ("io", ["io"]),
    ("binning", ["binning", "attitude"]),
    ("response", ["response"]),
    ("deconvolution", ["config", "deconvolution", "testing", "distributed"]),
    ("outputs", ["plotting", "jobs", "report", "rundir"]),
    ("applications", ["demo", "cli", "__main__"]),
]
#: The simulator stands beside imaging: it may use these layers, and none of them may use it.
SIMULATOR = "simulate"
SIMULATOR_MAY_USE = {"base", "io", "binning", "response"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, name: str) -> set[str]:
    """Fully qualified comptonsky modules that ``path`` imports (with their parent packages)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    # the packages that hold this module are initialised before it runs: no edge to them
    own_packages = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)}
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{alias.name}" for alias in node.names]
        for target in targets:
            if target == ROOT or not target.startswith(ROOT + "."):
                continue
            parts = target.split(".")
            for k in range(2, len(parts) + 1):
                found.add(".".join(parts[:k]))
    return found - own_packages


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        edges[name] = {m for m in imported_modules(path, name) if m in modules and m != name}
    return edges


def layer_of(module: str) -> str | None:
    if module == ROOT:
        return "applications"
    first = module.split(".")[1]
    if first == SIMULATOR:
        return SIMULATOR
    for layer, tops in LAYERS:
        if first in tops:
            return layer
    return None


RANK = {layer: k for k, (layer, _) in enumerate(LAYERS)}


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in graph() if layer_of(m) is None)
    assert not unplaced, f"modules in no layer of tests/test_architecture.py: {unplaced}"


def test_layers_only_point_down():
    bad = []
    for module, targets in graph().items():
        src = layer_of(module)
        for target in targets:
            dst = layer_of(target)
            if src == SIMULATOR:
                ok = dst == SIMULATOR or dst in SIMULATOR_MAY_USE
            elif dst == SIMULATOR:
                ok = RANK[src] >= RANK["outputs"]
            else:
                ok = RANK[dst] <= RANK[src]
            if not ok:
                bad.append(f"{module} ({src}) imports {target} ({dst})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = strongly_connected(graph())
    assert not cycles, f"import cycles: {cycles}"


def test_cycle_detector_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("src, expected", [
    ("from ..response.operator import X", {"comptonsky.response", "comptonsky.response.operator",
                                          "comptonsky.response.operator.X"}),
    ("def f():\n    from ..simulate import orbit", {"comptonsky.simulate",
                                                    "comptonsky.simulate.orbit"}),
    ("import comptonsky.io.fetch as f", {"comptonsky.io", "comptonsky.io.fetch"}),
    ("from .rl import RL", {"comptonsky.deconvolution.rl", "comptonsky.deconvolution.rl.RL"}),
])
def test_import_walker_sees_every_form(tmp_path, src, expected):
    path = tmp_path / "mod.py"
    path.write_text(src)
    assert imported_modules(path, "comptonsky.deconvolution.mod") == expected
