"""The package namespace: `lossgap.score` is the scoring function however the submodule of that name is reached,
and importing the package (for its config classes) does not import torch."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest


def test_score_is_the_function_and_the_module_stays_reachable():
    import lossgap
    import lossgap.score as reached  # binds the package attribute, i.e. the function, as before
    from lossgap import ScoreResult, score
    from lossgap.score import score_offsets

    module = sys.modules["lossgap.score"]
    assert isinstance(module, types.ModuleType) and callable(score_offsets)
    assert lossgap.score is score is reached is module.score
    assert ScoreResult is module.ScoreResult
    assert set(lossgap.__all__) <= set(dir(lossgap))  # completion and pydoc see the lazy names


def test_replacing_the_function_on_the_package_is_refused_with_the_way_to_patch():
    import lossgap

    with pytest.raises(AttributeError, match=r"sys.modules\['lossgap.score'\]"):
        lossgap.score = lambda cfg: None
    assert callable(lossgap.score) and lossgap.score.__module__ == "lossgap.score"


def test_importing_the_package_leaves_torch_unimported():
    probe = ("import sys, lossgap; cfg = lossgap.RunConfig(out='x'); "
             "print('torch' in sys.modules, 'transformers' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False False", proc.stderr
