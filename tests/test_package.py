"""The package namespace: no module shares its name with a function it exports, the public functions are reached
lazily (PEP 562) as `lossgap.score` and `lossgap.compare`, and importing the package does not import torch."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import lossgap


def test_public_functions_resolve_lazily_to_their_modules():
    from lossgap import ScoreResult, compare, score, score_offsets

    scoring = sys.modules["lossgap.run.scoring"]
    assert lossgap.score is score is scoring.score and score_offsets is scoring.score_offsets
    assert ScoreResult is scoring.ScoreResult
    assert compare is importlib.import_module("lossgap.run.comparison").compare
    assert set(lossgap.__all__) <= set(dir(lossgap))  # completion and pydoc see the lazy names


def test_an_unknown_attribute_is_an_attribute_error():
    try:
        lossgap.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_no_module_is_named_like_a_function_it_defines():
    clashes = []
    for info in pkgutil.iter_modules(lossgap.__path__):
        path = Path(lossgap.__path__[0]) / f"{info.name}.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
        if info.name in names:
            clashes.append(info.name)
    assert clashes == []


def test_importing_the_package_leaves_torch_unimported():
    probe = ("import sys, lossgap; cfg = lossgap.RunConfig(out='x'); "
             "print('torch' in sys.modules, 'transformers' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False False", proc.stderr


def _import_graph() -> dict[str, set[str]]:
    """lossgap's modules and the lossgap modules each imports, at module level or inside functions."""
    root = Path(lossgap.__path__[0])
    modules = {p.stem for p in root.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name in modules:
        edges = set()
        for node in ast.walk(ast.parse((root / f"{name}.py").read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level == 0 and not (node.module or "").startswith("lossgap"):
                    continue
                base = (node.module or "").removeprefix("lossgap").lstrip(".").split(".")[0]
                if base:
                    edges.add(base)
                else:  # from . import x: the submodule x, or the package itself
                    edges |= {a.name if a.name in modules else "__init__" for a in node.names}
            elif isinstance(node, ast.Import):
                edges |= {a.name.split(".")[1] if "." in a.name else "__init__" for a in node.names
                          if a.name.split(".")[0] == "lossgap"}
        graph[name] = edges & modules
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module, or a module importing itself (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycles():
    graph = _import_graph()
    assert graph["scoring"] >= {"engine", "runner"} and "scoring" not in graph["forward"]  # the walk sees imports
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_function_level_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert _cycles({"a": {"a"}}) == [["a"]] and _cycles({"a": {"b"}, "b": set()}) == []


MAX_MODULE_LINES = 400  # small modules along the data flow, each readable top to bottom
MAX_FUNCTION_LINES = 60


def test_modules_and_functions_stay_small():
    too_long = []
    for path in sorted(Path(lossgap.__path__[0]).glob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.name}:{node.lineno} {node.name}: {length} lines")
    assert too_long == []
