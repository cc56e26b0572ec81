"""The layering of the house, checked on the source (imports point down, no circles, few
function-local imports), and Ray/MLflow staying in the search and tracking layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "hpsearch"

# floors from the bottom up (README "Architecture"); a module may import its own floor and the
# ones below it, never one above
FLOORS: list[tuple[str, ...]] = [
    ("errors", "provenance"),
    ("registry", "config", "hierarchy", "geometry"),
    ("data", "metrics", "class_embeddings"),
    ("models",),
    ("tasks",),
    ("bundle", "tracking"),
    ("search",),
    ("api", "report", "bench"),
    ("cli",),
]
FLOOR = {top: i for i, tops in enumerate(FLOORS) for top in tops}
MAX_LOCAL_IMPORTS = 10
RAY_OR_MLFLOW_ALLOWED = ("hpsearch.search", "hpsearch.tracking")


def module_files() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODULES = module_files()


def resolve(name: str) -> str | None:
    """The module a dotted import name lands in (``a.b.C`` -> ``a.b``), or None (not ours)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(name: str) -> list[tuple[str, int, bool, str]]:
    """(imported hpsearch module, line, function-local?, source line) of module ``name``."""
    src = MODULES[name].read_text()
    lines = src.splitlines()
    out = []

    def visit(node: ast.AST, local: bool) -> None:
        for ch in ast.iter_child_nodes(node):
            if isinstance(ch, ast.Import | ast.ImportFrom):
                if isinstance(ch, ast.Import):
                    targets = [a.name for a in ch.names]
                elif ch.level == 0 and ch.module:
                    targets = [f"{ch.module}.{a.name}" for a in ch.names]
                else:
                    targets = []
                for t in targets:
                    mod = resolve(t) if t.startswith("hpsearch") else None
                    if mod and mod != name:
                        out.append((mod, ch.lineno, local, lines[ch.lineno - 1]))
            visit(ch, local or isinstance(ch, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(ast.parse(src), False)
    return out


def floor_of(module: str) -> int | None:
    parts = module.split(".")
    return FLOOR.get(parts[1]) if len(parts) > 1 else None


def test_every_package_module_has_a_floor():
    missing = sorted(m for m in MODULES if m != "hpsearch" and floor_of(m) is None)
    assert not missing, f"modules outside every floor of FLOORS: {missing}"


def test_imports_point_down():
    up = [f"{m}:{line} imports {dep} (floor {floor_of(dep)} > {floor_of(m)})"
          for m in MODULES if m != "hpsearch"
          for dep, line, _, _ in imports(m) if floor_of(dep) > floor_of(m)]
    assert not up, "imports that run up a floor:\n" + "\n".join(up)


def find_circles() -> list[list[str]]:
    graph = {m: sorted({d for d, *_ in imports(m)}) for m in MODULES}
    circles, state, stack = [], {}, []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in graph[m]:
            if state.get(d) == 1:
                circles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                dfs(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)
    return circles


def test_no_import_circles():
    circles = find_circles()
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_circle_finder_finds_a_circle(monkeypatch):
    """The check above can fail: two modules that import each other are reported."""
    fake = {"hpsearch.x": [("hpsearch.y", 1, False, "")], "hpsearch.y": [("hpsearch.x", 1,
                                                                             True, "")]}
    monkeypatch.setitem(MODULES, "hpsearch.x", Path("x.py"))
    monkeypatch.setitem(MODULES, "hpsearch.y", Path("y.py"))
    monkeypatch.setattr(sys.modules[__name__], "imports",
                        lambda m: fake.get(m, []) if m in fake else [])
    assert ["hpsearch.x", "hpsearch.y", "hpsearch.x"] in find_circles()


def test_few_function_local_imports_each_with_a_reason():
    """A function-local import defers a heavy optional dependency (and says so on its line or
    the line above); it never dodges a circle."""
    local = {}  # one entry per import statement
    for m in MODULES:
        lines = MODULES[m].read_text().splitlines()
        for dep, line, is_local, text in imports(m):
            if is_local:
                why = text.partition("#")[2].strip() or lines[line - 2].strip().lstrip("#")
                local[f"{m}:{line} -> {dep}"] = why.strip()
    assert len(local) <= MAX_LOCAL_IMPORTS, local
    unexplained = [where for where, why in local.items() if not why]
    assert not unexplained, f"function-local imports without a reason: {unexplained}"


@pytest.mark.parametrize("lib", ["ray", "mlflow"])
def test_ray_and_mlflow_are_imported_only_in_search_and_tracking(lib):
    bad = []
    for m, f in MODULES.items():
        if m.startswith(RAY_OR_MLFLOW_ALLOWED):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{m}:{node.lineno}" for n in names if n.split(".")[0] == lib]
    assert not bad, f"{lib} imported outside search/ and tracking: {bad}"


def test_core_modules_do_not_import_ray_or_mlflow():
    """Below the search layer everything imports (and so tests) with torch alone."""
    below = sorted(m for m in MODULES if m != "hpsearch" and floor_of(m) <= FLOOR["tracking"])
    code = ("import sys\n" + "".join(f"import {m}\n" for m in below) +
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow'))\n"
            "print(','.join(bad))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"imported: {r.stdout.strip()[:300]}"


def test_every_module_imports():
    import importlib
    import pkgutil

    import hpsearch

    names = [m.name for m in pkgutil.walk_packages(hpsearch.__path__, "hpsearch.")]
    assert "hpsearch.search.tuner" in names and "hpsearch.search.trainable" in names
    for name in names:
        importlib.import_module(name)
