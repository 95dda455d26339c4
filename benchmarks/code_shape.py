"""The shape of a source tree, from an AST pass: largest modules and functions, counts, import cycles.

Usage: ``python benchmarks/code_shape.py [SOURCE_ROOT] [--top N]`` (default: the ``autoseg`` package next to
this script). Prints Markdown tables, ready for ``docs/design.md``.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def function_sizes(tree: ast.Module) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function and method, nested ones included."""
    sizes: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                sizes.append((name, (child.end_lineno or child.lineno) - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return sizes


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.Module, package: str) -> set[str]:
    """Modules of ``package`` this module imports at module level (lazy imports inside functions excluded)."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == package}
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Simple cycles found by depth-first search (each reported once, from its smallest member)."""
    cycles: list[list[str]] = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for target in sorted(graph.get(node, ())):
            if target == start:
                cycles.append([*path, start])
            elif target not in path and target > start:
                walk(start, target, [*path, target])

    for start in sorted(graph):
        walk(start, start, [start])
    return cycles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", nargs="?", type=Path, default=Path(__file__).parents[1] / "autoseg")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args(argv)
    root: Path = args.root
    modules, functions, graph = [], [], {}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        name = module_name(path, root)
        modules.append((name, len(text.splitlines())))
        functions += [(f"{name}.{f}", n) for f, n in function_sizes(tree)]
        graph[name] = {m for m in imported_modules(tree, root.name) if m != name}
    modules.sort(key=lambda item: -item[1])
    functions.sort(key=lambda item: -item[1])
    print(f"{len(modules)} modules, {sum(n for _, n in modules)} lines, {len(functions)} functions; ", end="")
    print(f"functions over 40 lines: {sum(1 for _, n in functions if n > 40)}; ", end="")
    print(f"modules over 400 lines: {sum(1 for _, n in modules if n > 400)}")
    print("\n| largest modules | lines |\n|---|---|")
    for name, lines in modules[: args.top]:
        print(f"| `{name}` | {lines} |")
    print("\n| largest functions | lines |\n|---|---|")
    for name, lines in functions[: args.top]:
        print(f"| `{name}` | {lines} |")
    cycles = find_cycles(graph)
    print(f"\nmodule-level import cycles: {len(cycles)}")
    for cycle in cycles:
        print("  " + " -> ".join(cycle))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
