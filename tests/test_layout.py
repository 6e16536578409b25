"""The package's layout (issue 11): no import cycle among hacluster's modules, none over 500 lines.

Both tests read the source only (``ast`` and line counts); nothing is imported. Each has an
allowlist at the top for what is still being cut. The lists must only shrink: a test fails
when an entry no longer applies, so that it is removed as soon as the work is done.
"""

from __future__ import annotations

import ast
import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hacluster"
MAX_LINES = 500

# Modules allowed over MAX_LINES, each with why (none today; the test fails when a listed file
# is no longer over the limit, so the list only shrinks).
TOO_LONG: dict[str, str] = {}

# Import cycles tolerated, each as the set of modules of its strongly connected component
# (none today; keep it that way: move what both sides need into a module of its own).
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def extension_modules() -> set[str]:
    """Modules written in C (``hacluster/wal/_replay.c``, built or not): they import nothing
    of hacluster, but ``from hacluster.wal import _replay`` imports them, not the package."""
    return {module_name(p.with_name(p.name.split(".")[0] + ".py"))
            for pattern in ("*.c", "*.so") for p in PACKAGE.rglob(pattern)}


def imported(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The hacluster modules ``name`` imports anywhere in its source: at module level, under
    ``if TYPE_CHECKING:`` and inside functions alike."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "hacluster" or alias.name.startswith("hacluster."):
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[:-(node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base != "hacluster" and not base.startswith("hacluster."):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                # ``from hacluster.x import y``: the module hacluster.x.y when there is one,
                # otherwise a name of hacluster.x.
                yield sub if sub in known else base


def import_graph() -> dict[str, set[str]]:
    """Module -> the hacluster modules it imports (only those that exist as files).

    A package ``__init__`` importing its own submodules is an ordinary edge. The implicit
    import of a package's ``__init__`` when one of its submodules is imported (``import
    hacluster.foo.bar`` runs ``hacluster/foo/__init__.py`` first) is left out: every submodule
    would otherwise form a cycle with any ``__init__`` that re-exports it, which is how a
    package is meant to work. Only explicit imports count.
    """
    found = modules()
    known = set(found) | extension_modules()
    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        graph[name] = {t for t in imported(name, path, known) if t in found and t != name}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
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
                    out.append(sorted(component))
    return out


def shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """The shortest cycle from ``start`` back to it, through modules of ``within`` only."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node] & within):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    return [start]


def describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    cycles = {" -> ".join(shortest_cycle(graph, m, members)) for m in component}
    return (f"{{{', '.join(component)}}}:\n" + "\n".join(f"    {c}" for c in sorted(cycles)))


def test_no_import_cycles() -> None:
    graph = import_graph()
    components = strongly_connected(graph)
    found = {frozenset(c) for c in components}
    new = [describe(graph, c) for c in components if frozenset(c) not in KNOWN_CYCLES]
    gone = [", ".join(sorted(c)) for c in KNOWN_CYCLES if c not in found]
    problems = []
    if new:
        problems.append("import cycles (cut them, e.g. by moving what both sides need into a "
                        "module of its own):\n  " + "\n  ".join(new))
    if gone:
        problems.append("KNOWN_CYCLES lists cycles that no longer exist (remove them):\n  "
                        + "\n  ".join(gone))
    assert not problems, "\n".join(problems)


def test_no_module_over_500_lines() -> None:
    counts = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
              for p in sorted(PACKAGE.rglob("*.py"))}
    over = [f"{path}: {n} lines" for path, n in counts.items()
            if n > MAX_LINES and path not in TOO_LONG]
    stale = [f"{path}: {counts[path]} lines" if path in counts else f"{path}: no such file"
             for path in TOO_LONG if counts.get(path, 0) <= MAX_LINES]
    problems = []
    if over:
        problems.append(f"modules over {MAX_LINES} lines (split them by what they own):\n  "
                        + "\n  ".join(over))
    if stale:
        problems.append(f"TOO_LONG lists modules that are not over {MAX_LINES} lines (remove "
                        "them):\n  " + "\n  ".join(stale))
    assert not problems, "\n".join(problems)


def test_every_module_has_one_line_in_the_architecture_doc() -> None:
    """docs/architecture.md keeps one line per module: a new module gets its line, a moved or
    deleted one loses it."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    listed = re.findall(r"^\| `(hacluster/[\w/]+\.py)` \|", doc, flags=re.MULTILINE)
    modules = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")}
    missing = sorted(modules - set(listed))
    stale = sorted(set(listed) - modules)
    twice = sorted({m for m in listed if listed.count(m) > 1})
    assert not (missing or stale or twice), (
        f"not in docs/architecture.md: {missing}; listed but gone: {stale}; twice: {twice}")
