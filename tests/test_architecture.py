"""The package's import graph: no cycle, and the library never imports its command line (docs/architecture.md).

Every module of ``md2pr_st`` is read with :mod:`ast`, and each of its imports of another ``md2pr_st`` module is an
edge: imports at the top, inside functions and under ``if TYPE_CHECKING``, absolute and relative alike. An import
names a module: ``from md2pr_st.x import y`` is an edge to ``md2pr_st.x.y`` when that is a module, else to
``md2pr_st.x``; a package is its ``__init__``, whose re-exports of its own submodules are edges like any other. The
graph is strict: an import of a package depends on everything its ``__init__`` imports, and no cycle passes
through one either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import md2pr_st

ROOT = Path(md2pr_st.__file__).parent


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module of the package (a package by its ``__init__.py``)."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ["md2pr_st", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imported(name: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    """The ``md2pr_st`` modules an import statement of module ``name`` (file ``path``) names."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's package, up level - 1 packages
            package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    found = []
    for target in targets:
        while target and target not in modules:  # `import md2pr_st.x.y` of a name inside a module
            target = target.rpartition(".")[0]
        if target.startswith("md2pr_st") and target != name:
            found.append(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: the md2pr_st modules it imports}`` over the whole package."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name].update(_imported(name, path, node, modules))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search, white / grey / black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walk_sees_imports_inside_functions_and_relative_ones():
    graph = import_graph()
    # the teacher's package re-exports its submodules; a loss imports the teacher's package
    assert {"md2pr_st.teacher.cross_encoder", "md2pr_st.teacher.training"} <= graph["md2pr_st.teacher"]
    assert "md2pr_st.teacher" in graph["md2pr_st.losses.md2pr"]
    modules = _modules()
    name = "md2pr_st.false_negatives.filter"
    inner = ast.parse("def f():\n    from .. import validation\n    from .masking import FalseNegativeMasking\n")
    found = [
        target
        for node in ast.walk(inner)
        if isinstance(node, ast.ImportFrom)
        for target in _imported(name, modules[name], node, modules)
    ]
    assert found == ["md2pr_st.validation", "md2pr_st.false_negatives.masking"]


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_only_the_command_line_imports_the_command_line():
    offenders = {
        name: sorted(t for t in targets if t == "md2pr_st.cli" or t.startswith("md2pr_st.cli."))
        for name, targets in import_graph().items()
        if not (name == "md2pr_st.cli" or name.startswith("md2pr_st.cli."))
    }
    assert {name: targets for name, targets in offenders.items() if targets} == {}
