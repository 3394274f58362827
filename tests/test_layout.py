"""The package's layout rules, checked from the source (issue 30).

The import graph is built with ``ast`` from every ``import`` and ``from … import`` in a
module, *including the ones inside functions* (a local import hides a cycle, it does not
remove it). On that graph:

- no cycle, in probe/, apps/ or bench/;
- no private name (``_x``) imported from another module or used as ``module._x``;
- the stages layer one way: a module imports only its own stage or a lower one;
- no module in probe/ is longer than 400 lines;
- every sub-package of probe/ has an ``__init__`` docstring (what the stage takes and gives).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREES = ("probe", "apps", "bench")  # the folders whose modules make the graph
MAX_LINES = 400

# The pipeline, bottom to top: a module may import its own stage or any stage below it.
STAGES = [
    ("probe.errors", "probe.files", "probe.compiled", "probe._kernels"),
    ("probe.text",),
    ("probe.lm",),
    ("probe.recording",),
    ("probe.causal",),
    ("probe.analysis",),
    ("probe.readout",),
    ("probe.output",),
    ("probe.cli", "probe.__main__", "probe"),  # the command and the package's front door
    ("apps", "bench"),
]

# A private module may be imported by the one public module that wraps it.
PRIVATE_OWNERS = {"probe._kernels": "probe.compiled"}
# Scripts run from their folder, so they import their neighbours by bare name (import findings).
SCRIPTS = ("bench",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the trees: dotted name → file."""
    return {module_name(p): p for tree in TREES for p in sorted((ROOT / tree).rglob("*.py"))}


MODULES = modules()
KNOWN = set(MODULES) | set(PRIVATE_OWNERS)


def resolve(name: str, importer: str = "") -> str | None:
    """The longest known module that ``name`` is or lies in (``probe.a.b.f`` → ``probe.a.b``);
    in a script folder, a bare name may be a neighbour (``findings`` → ``bench.findings``)."""
    folder = importer.rpartition(".")[0]
    candidates = [name] + ([f"{folder}.{name}"] if importer.split(".")[0] in SCRIPTS else [])
    for candidate in candidates:
        while candidate:
            if candidate in KNOWN:
                return candidate
            candidate = candidate.rpartition(".")[0]
    return None


def absolute(importer: str, node: ast.ImportFrom) -> str:
    """The module a ``from … import`` names, relative imports made absolute."""
    if not node.level:
        return node.module or ""
    package = importer.split(".")
    if not MODULES[importer].name == "__init__.py":
        package.pop()
    package = package[: len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


@dataclass
class Imports:
    """What one module imports: the modules of ours it depends on, and each private name
    it takes from another module ("what (line n)")."""
    targets: set[str] = field(default_factory=set)
    private: list[str] = field(default_factory=list)


def read_imports(name: str) -> Imports:
    """Every import of module ``name``, at the top or inside a function, and every
    ``module._private`` read through a name one of them bound."""
    tree = ast.parse(MODULES[name].read_text(), str(MODULES[name]))
    found = Imports()
    bound: dict[str, str] = {}  # local name → the module of ours it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):  # import probe.x.y [as m]
            for alias in node.names:
                if resolve(alias.name, name):
                    found.targets.add(resolve(alias.name, name))
                    local = alias.asname or alias.name.split(".")[0]  # without "as": binds "probe"
                    bound[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom):  # from probe.x import y [as m]
            source = absolute(name, node)
            for alias in node.names:
                module = resolve(f"{source}.{alias.name}", name)
                if module and module.rpartition(".")[2] == alias.name:  # y is a module
                    found.targets.add(module)
                    bound[alias.asname or alias.name] = module
                elif resolve(source, name):  # y is a name defined in probe.x
                    found.targets.add(resolve(source, name))
                else:
                    continue  # not ours
                if is_private(alias.name) and PRIVATE_OWNERS.get(module) != name:
                    found.private.append(f"from {source} import {alias.name} (line {node.lineno})")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            owner = dotted(node.value)  # m._x, or probe.x.y._x
            if owner and owner.split(".")[0] in bound:
                head, _, rest = owner.partition(".")
                module = resolve(".".join(filter(None, [bound[head], rest])), name)
                if module and module != name:
                    found.private.append(f"{owner}.{node.attr} (line {node.lineno})")
    found.targets.discard(name)
    return found


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of plain attribute reads on a name, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return inner and f"{inner}.{node.attr}"
    return None


IMPORTS = {name: read_imports(name) for name in MODULES}
GRAPH = {name: imports.targets for name, imports in IMPORTS.items()}


def stage(module: str) -> int:
    """The index in STAGES of the module's stage (its longest matching prefix)."""
    best, depth = None, -1
    for index, prefixes in enumerate(STAGES):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = index, prefix.count(".")
    assert best is not None, f"{module} is in no stage: add it to STAGES"
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module
    (Tarjan's algorithm, then a path around the component)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [loop_through(graph, component) for component in components]


def loop_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A path from the component's first module back to itself, inside the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for nxt in sorted(graph[node] & component):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                frontier.append(nxt)
    raise AssertionError("a strongly connected component always has a loop")


def test_the_graph_sees_local_imports():
    """The check itself: a function-local import is an edge like any other."""
    tree = ast.parse("def f():\n    from probe.recording import reader\n")
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(tree))
    assert "probe.recording.reader" in GRAPH["probe"]  # imported at the top of probe/__init__
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    found = cycles(GRAPH)
    assert not found, "import cycles:\n" + "\n".join(" → ".join(loop) for loop in found)


def test_no_private_name_crosses_modules():
    taken = [f"{name}: {what}" for name, imports in IMPORTS.items() for what in imports.private]
    assert not taken, "private names used across modules:\n" + "\n".join(taken)


def test_stages_import_downward():
    upward = [f"{a} (stage {stage(a)}) imports {b} (stage {stage(b)})"
              for a, targets in GRAPH.items() for b in sorted(targets) if stage(b) > stage(a)]
    assert not upward, "imports up the pipeline:\n" + "\n".join(upward)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.split(".")[0] == "probe"))
def test_module_is_short(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)}: {lines} lines (at most {MAX_LINES})"


@pytest.mark.parametrize("package", sorted(p.parent.name for p in (ROOT / "probe").glob("*/__init__.py")))
def test_subpackage_says_what_it_takes_and_gives(package):
    init = ROOT / "probe" / package / "__init__.py"
    docstring = ast.get_docstring(ast.parse(init.read_text()))
    assert docstring and len(docstring.split()) >= 8, f"{init.relative_to(ROOT)}: no docstring"
