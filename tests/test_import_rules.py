"""The package's import rules, checked statically (ast, nothing imported):

* the library never imports the layers above it: no module under ``hmrmamba/`` outside
  ``hmrmamba/stages/`` imports ``hmrmamba.stages``, ``tasks`` or ``flows``, at module level or
  inside a function. ``hmrmamba/cli.py`` is the one exception: the command line is the entry point
  that runs the stages (``hmrmamba stage NAME``), above them like ``flows/`` and ``tasks/``;
* there is no import cycle among the package's modules (module-level imports; ``if TYPE_CHECKING``
  blocks do not count, they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hmrmamba"
UPPER_LAYERS = ("hmrmamba.stages", "tasks", "flows")
ENTRY_POINTS = {"hmrmamba.cli"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(mod: str, path: Path, *, module_level_only: bool) -> list[tuple[str, int]]:
    """(imported module name, line) of ``path``; ``from a import b`` yields ``a.b`` and ``a``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, int]] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                out.extend((a.name, node.lineno) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node)
                out.append((base, node.lineno))
                out.extend((f"{base}.{a.name}", node.lineno) for a in node.names if a.name != "*")
            elif isinstance(node, ast.If) and _is_type_checking(node):
                continue
            elif module_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if not module_level_only or isinstance(node, (ast.If, ast.Try, ast.With, ast.ClassDef)):
                visit([c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)])
            if isinstance(node, ast.Try):
                for h in node.handlers:
                    visit(h.body)

    visit(tree.body)
    return out


def layer_violations() -> list[str]:
    bad = []
    for mod, path in modules().items():
        if mod == "hmrmamba.stages" or mod.startswith("hmrmamba.stages.") or mod in ENTRY_POINTS:
            continue
        for name, line in imports(mod, path, module_level_only=False):
            if any(name == up or name.startswith(up + ".") for up in UPPER_LAYERS):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return sorted(set(bad))


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for name, _ in imports(mod, path, module_level_only=True):
            # the longest known module the name refers to (``from a import b``: a.b if it is a module, else a)
            while name and name not in mods:
                name = name.rpartition(".")[0]
            if name and name != mod:
                graph[mod].add(name)
    # importing a.b.c runs a/__init__ and a.b/__init__ first
    for mod in list(graph):
        for dep in list(graph[mod]):
            parts = dep.split(".")
            for i in range(1, len(parts)):
                parent = ".".join(parts[:i])
                if parent in graph and parent != mod and not mod.startswith(parent + "."):
                    graph[mod].add(parent)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path = [start]
        state[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop()
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph.get(nxt, ()))))
    return None


def test_the_library_never_imports_stages_tasks_or_flows():
    assert layer_violations() == []


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_the_checker_sees_function_level_imports_and_cycles(tmp_path):
    """The rules above can fail: a function-level stage import and a two-module cycle are both found."""
    lib = tmp_path / "lib.py"
    lib.write_text("def f():\n    from hmrmamba.stages.evaluate import run\n    return run\n")
    found = [n for n, _ in imports("hmrmamba.lib", lib, module_level_only=False)]
    assert "hmrmamba.stages.evaluate" in found
    assert "hmrmamba.stages.evaluate" not in [n for n, _ in imports("hmrmamba.lib", lib, module_level_only=True)]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_readers_import_their_toolkit_not_their_dispatcher():
    graph = import_graph()
    for reader in ("hmrmamba.data.real.h36m", "hmrmamba.data.real.pw3d", "hmrmamba.data.real.mpi3dhp"):
        assert "hmrmamba.data.real.tools" in graph[reader]
        assert "hmrmamba.data.real.dispatch" not in graph[reader]
        assert "hmrmamba.data.real.registry" not in graph[reader]
    assert "hmrmamba.data.real.registry" in graph["hmrmamba.data.real.dispatch"]


#: The only modules at the package's top level: small core modules every layer uses (docs/design.md, "Map of
#: the code"). Everything else lives in the package of its pipeline step.
CORE_MODULES = {"hmrmamba", "hmrmamba.allocator", "hmrmamba.atomic", "hmrmamba.cli", "hmrmamba.config", "hmrmamba.errors",
                "hmrmamba.geometry", "hmrmamba.layout", "hmrmamba.mlflow_runs", "hmrmamba.named_rng",
                "hmrmamba.profiles", "hmrmamba.safe_pickle", "hmrmamba.settings", "hmrmamba.skeleton"}


def test_only_core_modules_sit_at_the_top_of_the_package():
    top = {name for name, path in modules().items() if path.parent == PACKAGE}
    assert top == CORE_MODULES


def test_the_design_map_names_every_package():
    """docs/design.md's map has a row for each subpackage (folder with an __init__.py) of the library."""
    text = (ROOT / "docs/design.md").read_text()
    packages = sorted(str(p.parent.relative_to(ROOT)) for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE)
    missing = [p for p in packages if f"`{p}/`" not in text]
    assert missing == []


def test_the_library_holds_no_test_fixtures():
    assert not any("fabricat" in p.name for p in PACKAGE.rglob("*.py"))
