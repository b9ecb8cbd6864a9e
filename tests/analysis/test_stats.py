"""Summary statistics at the edge of a float: a mean NLL or a difference whose exp overflows."""

from __future__ import annotations

import math

import numpy as np

from lossgap.analysis.stats import aggregate, perplexity, relative_perplexity_change

EXP_LIMIT = math.log(np.finfo(np.float64).max)  # 709.78: exp of anything larger is beyond the largest float


def test_perplexity_is_inf_where_exp_overflows():
    assert perplexity(EXP_LIMIT - 1e-9) < math.inf and perplexity(EXP_LIMIT + 1e-9) == math.inf
    assert perplexity(46977.96) == perplexity(math.inf) == math.inf
    assert perplexity(2.0) == math.exp(2.0) and math.isnan(perplexity(float("nan")))
    assert relative_perplexity_change(800.0) == math.inf and relative_perplexity_change(-800.0) == -1.0
    assert relative_perplexity_change(0.144) == math.expm1(0.144)
    assert math.isnan(relative_perplexity_change(float("nan")))


def test_a_huge_mean_nll_aggregates_to_an_infinite_perplexity():
    n_tokens = np.array([10, 20])
    out = aggregate(n_tokens, 4 * n_tokens, {"nll_sum": np.array([8000.0, 30000.0])})
    assert out["mean_nll"] == 38000.0 / 30 and out["perplexity"] == math.inf
