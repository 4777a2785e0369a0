"""The shape of the code, held by tests: no import circles in the package, the daemon in small
classes, and the task states written down in one place."""

from __future__ import annotations

import ast
from pathlib import Path

from ..conftest import ROOT

PACKAGE = ROOT / "hpc_bridge"


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_at_load(tree: ast.AST, modules: set[str]) -> set[str]:
    """Project modules imported when the module is loaded (function bodies and TYPE_CHECKING
    blocks left out: those run later, or never)."""
    found: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {n for n in (node.module, *(f"{node.module}.{a.name}" for a in node.names)) if n in modules}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        else:
            found |= _imports_at_load(node, modules)
    return found


def test_no_import_circles() -> None:
    paths = {_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: _imports_at_load(ast.parse(p.read_text()), set(paths)) - {m} for m, p in paths.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(module):], module]))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_no_daemon_class_is_over_200_lines() -> None:
    for path in (PACKAGE / "daemon").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                assert length <= 200, f"{path.name}: class {node.name} has {length} lines"


def test_task_state_sets_are_defined_only_in_lifecycle() -> None:
    """A collection of two or more TES state names is written down once (the root helper, which
    imports nothing of the project, keeps a copy that test_lifecycle compares)."""
    states = {"UNKNOWN", "QUEUED", "INITIALIZING", "RUNNING", "PAUSED", "COMPLETE", "EXECUTOR_ERROR",
              "SYSTEM_ERROR", "CANCELED", "CANCELING", "PREEMPTED"}
    slurm = {"RUNNING", "COMPLETE", "PREEMPTED"}  # names Slurm's own states share with TES
    allowed = {PACKAGE / "lifecycle.py", PACKAGE / "runas" / "helper.py"}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Set, ast.List, ast.Tuple)) and len(node.elts) >= 2:
                names = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if len(names) == len(node.elts) and names <= states and not names <= slurm \
                        and path not in allowed:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
