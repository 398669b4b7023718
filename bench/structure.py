"""The shape of the code, measured from its source: import circles, floors, who creates an MlflowClient, long
functions and functions that take a profile name (the acceptance figures of the "one shape" issue).

    python bench/structure.py [--max-lines 60]

Every import between the project's own modules counts, function-local ones too (they hide the real graph).
A module's floor is 0 when it imports none of the project's modules, else 1 + the highest floor it imports;
modules in one circle share a floor. "Upward" imports run from the platform package (`ablab`) to the
presentation one (`dashboards`), which sits on top of it.
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"ablab": REPO / "platform" / "ablab", "detector": REPO / "detector", "dashboards": REPO / "dashboards"}
LAYER = {"detector": 0, "ablab": 1, "dashboards": 2}
"""Which package may import which: a package imports only those on a lower layer, and itself."""
COMMAND_MODULES = {"ablab.cli", "ablab"}
"""The composition root: the commands resolve a profile name; below them nothing should take one."""
EDGE = {"ablab.launch.open_launch", "ablab.launch.of", "ablab.launch.sibling", "ablab.query.results",
        "ablab.query.claims", "ablab.query.effects", "ablab.naming.launch_key", "ablab.naming.launch_args",
        "ablab.paths.study_dir"}
"""Where a profile name is the input by design: resolving a launch (``open_launch``, ``Launch.of``), the public
``ablab.results`` / ``claims`` / ``effects`` (a user's entry points, as the commands are), and the names a launch's
profile and --set spell (its key, its arguments, its folder). Counted apart."""


def modules() -> dict[str, Path]:
    found = {}
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (``from . import x`` resolved)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v), on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def floors(graph: dict[str, set[str]], cycles: list[list[str]]) -> dict[str, int]:
    rep = {m: c[0] for c in cycles for m in c}
    floor: dict[str, int] = {}

    def of(v, seen=()):
        v = rep.get(v, v)
        if v not in floor:
            members = [m for m in graph if rep.get(m, m) == v]
            below = {rep.get(w, w) for m in members for w in graph[m]} - {v}
            floor[v] = 1 + max((of(w) for w in below), default=-1)
        return floor[v]

    return {m: of(m) for m in graph}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-lines", type=int, default=60)
    args = ap.parse_args()
    found = modules()
    graph = {name: imports_of(name, path, set(found)) for name, path in found.items()}
    cycles = circles(graph)
    floor = floors(graph, cycles)
    upward = sorted(f"{m} -> {w}" for m, ws in graph.items() for w in ws
                    if LAYER[w.split(".")[0]] > LAYER[m.split(".")[0]])
    clients, long_functions, profile_takers, edge = Counter(), [], [], []
    for name, path in found.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "MlflowClient":
                clients[name] += 1
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > args.max_lines and "parser" not in node.name:
                    long_functions.append(f"{name}.{node.name} ({length} lines)")
                params = [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
                if "profile" in params and name not in COMMAND_MODULES:
                    (edge if f"{name}.{node.name}" in EDGE else profile_takers).append(f"{name}.{node.name}")
    print(f"modules: {len(found)} on {max(floor.values()) + 1} floors")
    print(f"import circles: {len(cycles)}" + "".join(f"\n  {' <-> '.join(c)}" for c in cycles))
    print(f"imports up a layer: {len(upward)}" + "".join(f"\n  {u}" for u in upward))
    print(f"modules creating an MlflowClient: {len(clients)}" + "".join(f"\n  {m} ({n})" for m, n in sorted(clients.items())))
    print(f"functions over {args.max_lines} lines: {len(long_functions)}" + "".join(f"\n  {f}" for f in long_functions))
    print(f"functions below the commands taking a profile: {len(profile_takers)}"
          + "".join(f"\n  {f}" for f in profile_takers))
    print(f"functions that take a profile by design (EDGE): {len(edge)}: {', '.join(sorted(edge))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
