"""The import structure: no circles anywhere, and the fitting half never imports the harvest half
or torch (a laptop fits from the tables alone).

The graph counts every import statement, at module level or inside a function (a lazy import
is still a dependency), between the project's own modules. A package's ``__init__`` counts as
the module named by the package.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("emergence", "fitting", "harvest")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every absolute name ``path`` imports (``from a.b import c`` gives a.b and a.b.c)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def import_graph() -> dict[str, set[str]]:
    modules = _modules()

    def owner(name: str) -> str | None:  # the project module a dotted name lives in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    return {m: {o for n in _imports(p) if (o := owner(n)) and o != m} for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_circles_in_the_project():
    graph = import_graph()
    found = cycles(graph)
    detail = "; ".join(" <-> ".join(c) + " (" + ", ".join(f"{m} imports {sorted(graph[m] & set(c))}"
                                                          for m in c) + ")" for c in found)
    assert not found, f"import circles: {detail}"


def test_fitting_never_imports_harvest_or_torch_statically():
    modules = _modules()
    heavy = ("torch", "transformers", "peft", "vllm", "accelerate", "harvest")
    bad = {m: sorted(n for n in _imports(p) if n.split(".")[0] in heavy)
           for m, p in modules.items() if m.split(".")[0] == "fitting"}
    assert not {m: n for m, n in bad.items() if n}


def test_fitting_imports_no_torch_at_run_time():
    """Import every fitting module in a fresh interpreter: torch and harvest stay out."""
    fitting = sorted(m for m in _modules() if m.split(".")[0] == "fitting")
    code = ("import importlib, sys\n"
            f"for m in {fitting!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'harvest', 'vllm'))\n"
            "print(','.join(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"fitting pulled in: {proc.stdout.strip()}"
