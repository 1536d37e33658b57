#!/usr/bin/env python3
"""Print the import cycles between the modules of one Python package; exit 1 if any.

Usage: python tools/import_cycles.py PACKAGE_DIR   (e.g. src/segloop)

`make check` and tests/test_import_cycles.py run it on src/segloop, so a change that makes
two modules import each other fails both. The layers it keeps apart are drawn in
docs/architecture.md; when it reports a cycle, move the shared piece into a third, lower
module (as locks.py, segment/send/answers.py and web/pages.py were made) rather than hiding the
import inside a function: that still counts.

Every import counts, also those inside functions; imports under ``if TYPE_CHECKING:``
do not (they never run). ``from pkg import name`` points at ``pkg.name`` when that is a
module of the package, otherwise at ``pkg`` itself. A package's ``__init__`` run by
Python before a submodule is not counted as an edge (no tool draws it, and the lazy
``__getattr__`` facades here would make every module one cycle).

Output: one block per strongly connected component (a set of modules that reach each
other), with each import line inside it as ``file:line  statement``, then the elementary
cycles found in it (shortest first, at most --max-cycles). Stdlib only (ast). Imports
spelled as strings (``importlib.import_module``, lazy ``__getattr__`` maps) are not seen.
Exit status: 0 no cycle, 1 a cycle, 2 the argument is not a package.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import deque
from pathlib import Path


def module_name(package_dir: Path, path: Path) -> str:
    rel = path.relative_to(package_dir.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    if isinstance(test, ast.Attribute):
        return test.attr == "TYPE_CHECKING"
    return False


def runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Import nodes anywhere in the tree except in the body of ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def resolve_base(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    parts = current.split(".")
    if not is_package:
        parts = parts[:-1]
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    base = ".".join(parts)
    if node.module:
        base = f"{base}.{node.module}" if base else node.module
    return base


def nearest_module(name: str, modules: set[str]) -> str | None:
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


Edge = tuple[str, str, str, int, str]  # source, target, file, line, statement


def build_graph(package_dir: Path) -> tuple[dict[str, set[str]], list[Edge]]:
    package_dir = package_dir.resolve()
    files = {module_name(package_dir, p): p for p in sorted(package_dir.rglob("*.py"))}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    edges: list[Edge] = []
    root = package_dir.parent
    for mod, path in files.items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        is_package = path.name == "__init__.py"
        for node in runtime_imports(ast.parse(source, filename=str(path))):
            targets: set[str] = set()
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = nearest_module(alias.name, modules)
                    if target:
                        targets.add(target)
            else:
                base = resolve_base(mod, is_package, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    target = sub if sub in modules else nearest_module(base, modules)
                    if target:
                        targets.add(target)
            statement = lines[node.lineno - 1].strip()
            for target in sorted(targets - {mod}):
                graph[mod].add(target)
                edges.append((mod, target, str(path.relative_to(root)), node.lineno, statement))
    return graph, edges


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components with more than one module only."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
    return sorted(result)


def shortest_path(graph: dict[str, set[str]], start: str, goal: str, allowed: set[str]) -> list[str]:
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = [node]
            while previous[path[-1]] is not None:
                path.append(previous[path[-1]])  # type: ignore[arg-type]
            return path[::-1]
        for child in sorted(graph[node]):
            if child in allowed and child not in previous:
                previous[child] = node
                queue.append(child)
    return []


def cycles_in(graph: dict[str, set[str]], component: list[str], limit: int) -> list[list[str]]:
    """For each edge a->b inside the component, the shortest cycle a->b->...->a; deduplicated."""
    allowed = set(component)
    seen: set[tuple[str, ...]] = set()
    cycles: list[list[str]] = []
    for a in component:
        for b in sorted(graph[a] & allowed):
            back = shortest_path(graph, b, a, allowed)
            if not back:
                continue
            cycle = [a, *back[:-1]]
            turn = cycle.index(min(cycle))
            key = tuple(cycle[turn:] + cycle[:turn])
            if key not in seen:
                seen.add(key)
                cycles.append(list(key))
    cycles.sort(key=lambda c: (len(c), c))
    return cycles[:limit]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package_dir", type=Path)
    parser.add_argument("--max-cycles", type=int, default=60)
    args = parser.parse_args(argv)
    if not (args.package_dir / "__init__.py").is_file():
        print(f"{args.package_dir} is not a package (it has no __init__.py); pass the package's folder, e.g. src/segloop")
        return 2
    graph, edges = build_graph(args.package_dir)
    components = strongly_connected(graph)
    if not components:
        print(f"no import cycles among {len(graph)} modules")
        return 0
    print(f"{len(components)} import cycle group(s) among {len(graph)} modules:")
    for n, component in enumerate(components, 1):
        members = set(component)
        print(f"\n[{n}] {len(component)} modules: {', '.join(component)}")
        print("  imports inside the group:")
        for src, dst, file, line, statement in sorted(edges, key=lambda e: (e[2], e[3], e[1])):
            if src in members and dst in members:
                print(f"    {file}:{line}  {statement}   [-> {dst}]")
        print("  cycles (shortest through each edge):")
        for cycle in cycles_in(graph, component, args.max_cycles):
            print("    " + " -> ".join([*cycle, cycle[0]]))
    return 1


if __name__ == "__main__":
    sys.exit(main())
