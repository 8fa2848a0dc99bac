"""Print each twoview module's imports of other twoview modules, and check the layering.

    python scripts/import_graph.py            # the graph, one module a line
    python scripts/import_graph.py --check    # exit 1 on an import cycle or an import against the layers

Layers, bottom up: models -> pipeline -> app (sample_data writes files and imports only models).
Imports inside functions (lazy ones, for start-up time) count for the layers but not for cycles,
since they run after every module involved has loaded.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "pipeline", "app", "sample_data")
#: What each package may import from the others.
ALLOWED = {
    "models": set(),
    "sample_data": {"models"},
    "pipeline": {"models", "sample_data"},
    "app": {"models", "pipeline"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(imports at module level, imports inside functions) of known twoview modules."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    top, lazy = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        found = {_resolve(name, known) for name in names} - {None}
        (top if _at_module_level(tree, node) else lazy).update(found)
    return top, lazy - top


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that `name` is or lies in (`pipeline.errors.ImageError` -> `pipeline.errors`)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def _at_module_level(tree: ast.Module, target: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
            child is target for child in ast.walk(node)
        ):
            return False
    return True


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    files = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
    known = set(files)
    top, lazy = {}, {}
    for name, path in files.items():
        top[name], lazy[name] = imports(path, known)
        for edges in (top[name], lazy[name]):
            edges.discard(name)
            edges.discard(name.split(".")[0])  # a package's lazy __init__ is not a dependency
    return top, lazy


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle among module-level imports (as a path that returns to its start)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def layer_violations(top: dict[str, set[str]], lazy: dict[str, set[str]]) -> list[str]:
    bad = []
    for name in sorted(top):
        package = name.split(".")[0]
        for other in sorted(top[name] | lazy[name]):
            target = other.split(".")[0]
            if target != package and target not in ALLOWED[package]:
                bad.append(f"{name} imports {other}: {package} may import only {sorted(ALLOWED[package])}")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 on a cycle or a layering violation")
    args = parser.parse_args(argv)
    top, lazy = graph()
    for name in sorted(top):
        shown = ", ".join(sorted(top[name]))
        later = f"  (inside functions: {', '.join(sorted(lazy[name]))})" if lazy[name] else ""
        print(f"{name} -> {shown or '-'}{later}")
    problems = [" -> ".join(c) for c in cycles(top)] + layer_violations(top, lazy)
    print(f"\n{len(top)} modules; cycles and layering violations: {len(problems)}")
    for problem in problems:
        print(f"  {problem}")
    return 1 if args.check and problems else 0


if __name__ == "__main__":
    sys.exit(main())
