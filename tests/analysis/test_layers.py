"""The layer attribution's figures and words (analysis/layers.py) from hand-made records: squared norms that add up
to a layer's relative change, and sentences that follow their numbers for every sign and shape of the path."""

from __future__ import annotations

import math

import pytest

from lossgap.analysis.layers import interpolation, layer_findings, path_finding, weight_change


def _param(name, layer, base_sq, diff_sq):
    return {"name": name, "layer": layer, "numel": 4, "base_sq": base_sq, "diff_sq": diff_sq,
            "identical": diff_sq == 0}


def test_a_layers_relative_change_is_from_its_summed_squared_norms():
    params = [_param("model.embed_tokens.weight", None, 4.0, 1.0), _param("model.layers.0.mlp.up.weight", 0, 9.0, 1.0),
              _param("model.layers.0.norm.weight", 0, 16.0, 0.0), _param("model.layers.1.mlp.up.weight", 1, 1.0, 0.0)]
    w = weight_change(params, 2)
    assert w["by_layer"][0]["rel_change"] == pytest.approx(math.sqrt(1 / 25))
    assert w["by_layer"][1]["rel_change"] == 0.0 and w["by_layer"][1]["identical"] == 1
    assert w["overall"] == pytest.approx(math.sqrt(2 / 30))
    assert w["identical"] == ["model.layers.0.norm.weight", "model.layers.1.mlp.up.weight"]
    assert {k["kind"] for k in w["by_kind"]} == {"mlp.up.weight", "norm.weight"}


def _path(values):
    record = {"hybrids": [{"column": f"a{i}", "kind": "alpha", "value": a}
                          for i, a in enumerate((0.0, 0.25, 0.5, 0.75, 1.0))]}
    return interpolation(record, {f"a{i}": {"d": v, "ci": [v, v]} for i, v in enumerate(values)})


@pytest.mark.parametrize("values, words", [
    ((0.0, 0.1, 0.2, 0.3, 0.5), ["rises monotonically", "40% of the other model's", "α = 0, the baseline's own"]),
    ((0.0, -0.1, -0.2, -0.3, -0.5), ["falls monotonically", "40% of the other model's", "α = 1, the other model's"]),
    ((0.0, -0.1, -0.05, 0.1, 0.2), ["is not monotone", "α = 0.25 (D = -0.1000), between the two: a mix"]),
])
def test_the_path_is_worded_from_its_points(values, words):
    path = _path(values)
    text = path_finding(path, values[-1])
    assert all(w in text for w in words), text


def test_identical_models_are_said_to_be_identical():
    r = {"d": 0.0, "blocks": [], "interaction": 0.0, "interpolation": _path((0, 0, 0, 0, 0)), "logit_lens": []}
    assert layer_findings(r) == ["The two models score the sample identically (D = 0), so no block carries a "
                                 "difference."]


def test_the_block_named_for_moving_d_towards_zero_ends_closest_to_it():
    """A block whose removal overshoots (D from +0.5 to -0.9) moves D further from zero than one leaving +0.1."""
    def block(name, only, kept):
        return {"name": name, "only": {"d": only}, "kept": {"d": kept}}

    r = {"d": 0.5, "interaction": 0.0, "interpolation": _path((0, 0.1, 0.2, 0.3, 0.5)), "logit_lens": [],
         "blocks": [block("layers 0-1", 0.3, -0.9), block("layers 2-3", 0.2, 0.1)]}
    assert "Keeping layers 2-3 from the baseline" in layer_findings(r)[1]
