"""The layers of `helpers` (docs/ARCHITECTURE.md), read from the source: imports point down, nothing imports in a
circle, library modules stay small, and every public library function names the lesson that teaches it.

The rules are checked on every module found on disk, so a new module is covered without editing this file.
"""
import ast
import re
from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parent.parent / "helpers"
TOOLS = ("helpers.course", "helpers.pretrain")
OLD_PATHS = ("helpers._moved", "helpers.scratch", "helpers.augment", "helpers.distributed_demo")  # one release
MAX_MODULE_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(HELPERS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(HELPERS.rglob("*.py"))}


def layer(module: str) -> str:
    if module.startswith("helpers.lessons"):
        return "lesson"
    if module.startswith(TOOLS):
        return "tool"
    if module.startswith(OLD_PATHS):
        return "old path"
    return "library"


LIBRARY = [m for m in MODULES if layer(m) == "library"]


def imported_modules(module: str) -> set[str]:
    """Every helpers module that `module` imports, at the top or inside a function. Importing `a.b` from outside
    package `a` also runs `a/__init__.py`, so `a` counts too."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{alias.name}" for alias in node.names]
            targets = [t if t in MODULES else node.module for t in targets]
        else:
            continue
        for target in targets:
            if target not in MODULES:
                continue
            found.add(target)
            parts = target.split(".")
            for depth in range(2, len(parts)):
                package = ".".join(parts[:depth])
                if not module.startswith(package + "."):
                    found.add(package)
    found.discard(module)
    return found


GRAPH = {module: imported_modules(module) for module in MODULES}


def test_the_library_and_the_tools_never_import_a_lesson_companion():
    allowed = {"library": {"library"}, "tool": {"library", "tool"}, "lesson": {"library", "tool", "lesson"},
               "old path": set()}
    wrong = [f"{m} ({layer(m)}) imports {t} ({layer(t)})" for m, targets in GRAPH.items() for t in sorted(targets)
             if layer(t) not in allowed[layer(m)] and t != "helpers._moved"]  # the table of old paths imports nothing
    assert not wrong, "imports must point down (docs/ARCHITECTURE.md):\n" + "\n".join(wrong)


def test_lesson_companions_do_not_import_each_other():
    wrong = [f"{m} imports {t}" for m, targets in GRAPH.items() for t in targets
             if layer(m) == layer(t) == "lesson" and not t.startswith(m.rsplit("_", 1)[0])]
    assert not wrong, "a lesson companion builds on the library, not on another lesson:\n" + "\n".join(wrong)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_another_in_a_circle():
    assert cycles(GRAPH) == []


def test_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", LIBRARY)
def test_library_modules_are_short_enough_to_read(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines: split it by concern (docs/ARCHITECTURE.md)"


LESSON = re.compile(r"\b[Ll]essons? \d\d\b")


@pytest.mark.parametrize("module", LIBRARY)
def test_public_library_functions_name_the_lesson_that_teaches_them(module):
    tree = ast.parse(MODULES[module].read_text())
    missing = [node.name for node in tree.body
               if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")
               and not LESSON.search(ast.get_docstring(node) or "")]
    assert not missing, f"{module}: say which lesson teaches {', '.join(missing)} in the docstring"


def test_every_notebook_has_a_companion_module():
    notebooks = sorted((HELPERS.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    missing = [p.name for p in notebooks if f"helpers.lessons.l{p.stem}" not in MODULES]
    assert not missing, f"add helpers/lessons/l<notebook>.py for {missing}"
