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

    scoring = sys.modules["lossgap.scoring"]
    assert lossgap.score is score is scoring.score and score_offsets is scoring.score_offsets
    assert ScoreResult is scoring.ScoreResult
    assert compare is importlib.import_module("lossgap.comparison").compare
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
