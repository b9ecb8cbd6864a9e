"""The package's shape: subpackages along the data flow with one allowed direction of imports (declared once, in
MAY_IMPORT), no import cycle between modules or packages, no torch in the parts that only read files, small modules
and functions at every depth, and a namespace whose public functions resolve lazily (PEP 562)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import lossgap

ROOT = Path(lossgap.__path__[0])

# The top-level modules, in two groups: the foundation every part may use, and the entry points that use every part.
TOP_LEVEL = {
    "foundation": ("errors", "options", "config", "version", "matrix"),
    "entry": ("__init__", "__main__", "cli", "demo"),
}
# What each part may import besides itself: the one declaration of the direction of dependency (docs/design.md shows
# it; each subpackage's docstring repeats its own line, checked below).
MAY_IMPORT = {
    "foundation": (),
    "formats": ("foundation",),
    "data": ("foundation", "formats"),
    "engine": ("foundation", "formats", "data"),
    "analysis": ("foundation", "formats"),
    "report": ("foundation", "formats"),
    "run": ("foundation", "formats", "data", "engine", "analysis", "report"),
    "entry": ("foundation", "formats", "data", "engine", "analysis", "report", "run"),
}
TORCH_FREE = ("formats", "analysis", "report")  # they read and write files only: `lossgap report` needs no torch
HEAVY = ("torch", "transformers", "accelerate")
MAX_TOP_LEVEL = 12
MAX_MODULE_LINES = 400  # small modules along the data flow, each readable top to bottom
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    """Every module by its name inside lossgap ("engine.plans"); a package's __init__ by the package's name
    ("engine"), the top package's as "__init__"."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def part_of(module: str) -> str:
    """The part a module belongs to: its subpackage, or its top-level group."""
    head = module.split(".")[0]
    if "." in module or head in MAY_IMPORT:
        return head
    return next((group for group, names in TOP_LEVEL.items() if module in names), f"<ungrouped {module}>")


def _package_of(module: str) -> list[str]:
    """The package a module's relative imports start from."""
    parts = module.split(".")
    if module == "__init__":
        return []
    if (ROOT / Path(*parts) / "__init__.py").exists():  # a package's __init__: its own package
        return parts
    return parts[:-1]


def _target(dotted: list[str]) -> str | None:
    """The lossgap module a dotted name (relative to lossgap) refers to; a package means its __init__."""
    name = ".".join(dotted)
    if not name:
        return "__init__"
    return name if name in MODULES else None


def imports_of(module: str, tree: ast.AST) -> tuple[set[str], set[str]]:
    """(lossgap modules, outside top-level packages) that `module` imports, at module level or inside functions."""
    inside, outside = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "lossgap":
                    inside.add(_target(parts[1:]) or "__init__")
                else:
                    outside.add(parts[0])
        elif isinstance(node, ast.ImportFrom):
            named = (node.module or "").split(".") if node.module else []
            if node.level == 0:
                if named[0] != "lossgap":
                    outside.add(named[0])
                    continue
                base = named[1:]
            else:
                package = _package_of(module)
                base = package[: len(package) - (node.level - 1)] + named
            for alias in node.names:  # `from x import y`: y is a submodule, or a name defined in x
                inside.add(_target([*base, alias.name]) or _target(base) or ".".join(base))
    return inside - {module}, outside


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    graph, outside = {}, {}
    for module, path in MODULES.items():
        graph[module], outside[module] = imports_of(module, ast.parse(path.read_text(encoding="utf-8")))
    return graph, outside


GRAPH, OUTSIDE = _graph()


def violations(graph: dict[str, set[str]], may_import: dict[str, tuple[str, ...]]) -> list[str]:
    """Imports from one part into another that the table does not allow."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = part_of(module), part_of(target)
            if a != b and b not in may_import.get(a, ()):
                found.append(f"{module} ({a}) imports {target} ({b})")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one node, or a node importing itself (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_relative_absolute_and_function_level_imports():
    assert {"engine.prepare", "run.runner", "analysis.stats", "formats.files"} <= GRAPH["run.scoring"]
    assert "run.scoring" in GRAPH["cli"] and "data.corpus_build" in GRAPH["cli"]  # inside functions
    assert "engine.forward" in GRAPH["run.runner"]  # from ..engine import forward
    assert "torch" in OUTSIDE["engine.head"] and "numpy" in OUTSIDE["analysis.attribution"]


def test_every_module_belongs_to_a_part_and_the_top_level_stays_small():
    assert sorted(m for m in MODULES if part_of(m).startswith("<")) == []
    top = [m for m in MODULES if "." not in m and m not in MAY_IMPORT]
    assert len(top) <= MAX_TOP_LEVEL, top
    assert {m.split(".")[0] for m in MODULES if "." in m} == set(MAY_IMPORT) - set(TOP_LEVEL)


def test_each_part_imports_only_the_parts_it_may():
    assert violations(GRAPH, MAY_IMPORT) == []


def test_the_direction_check_finds_a_wrong_way_import():
    graph = {"formats.columns": {"engine.head"}, "engine.head": {"formats.columns", "errors"}, "errors": set()}
    assert violations(graph, MAY_IMPORT) == ["formats.columns (formats) imports engine.head (engine)"]


def test_the_table_and_the_packages_have_no_cycle():
    assert cycles({part: set(allowed) for part, allowed in MAY_IMPORT.items()}) == []
    parts: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        parts.setdefault(part_of(module), set()).update(part_of(t) for t in targets if part_of(t) != part_of(module))
    assert cycles(parts) == []


def test_no_module_cycle_at_any_depth():
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_function_level_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]] and cycles({"a": {"b"}, "b": set()}) == []


def test_the_file_parts_do_not_import_torch():
    heavy = sorted(f"{m}: {sorted(OUTSIDE[m] & set(HEAVY))}" for m in MODULES
                   if part_of(m) in TORCH_FREE and OUTSIDE[m] & set(HEAVY))
    assert heavy == []
    names = sorted(f"lossgap.{m}" for m in MODULES if part_of(m) in TORCH_FREE)
    probe = f"import sys\nfor n in {names!r}: __import__(n)\nprint(sorted(set(sys.modules) & {set(HEAVY)!r}))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stderr


@pytest.mark.parametrize("package", sorted(set(MAY_IMPORT) - set(TOP_LEVEL)))
def test_each_package_says_what_it_holds_and_what_it_may_import(package):
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text(encoding="utf-8"))) or ""
    line = next((line for line in doc.splitlines() if line.startswith("May import:")), "")
    said = [word.strip(" .") for word in line.removeprefix("May import:").split(",") if word.strip(" .")]
    assert said == list(MAY_IMPORT[package]) or (said == ["nothing"] and not MAY_IMPORT[package]), doc
    assert len(doc.split()) > 12  # and what it holds


def test_public_functions_resolve_lazily_to_their_modules():
    from lossgap import ScoreResult, compare, score, score_offsets

    scoring = sys.modules["lossgap.run.scoring"]
    assert lossgap.score is score is scoring.score and score_offsets is scoring.score_offsets
    assert ScoreResult is scoring.ScoreResult
    assert compare is importlib.import_module("lossgap.run.comparison").compare
    assert set(lossgap.__all__) <= set(dir(lossgap))  # completion and pydoc see the lazy names


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        lossgap.no_such_thing  # noqa: B018


def test_no_module_is_named_like_a_function_it_defines():
    clashes = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
        if module.split(".")[-1] in names:
            clashes.append(module)
    assert clashes == []


def test_importing_the_package_leaves_torch_unimported():
    probe = ("import sys, lossgap; cfg = lossgap.RunConfig(out='x'); "
             "print('torch' in sys.modules, 'transformers' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False False", proc.stderr


def test_modules_and_functions_stay_small_at_every_depth():
    too_long = []
    for module, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{module}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{module}:{node.lineno} {node.name}: {length} lines")
    assert too_long == []
