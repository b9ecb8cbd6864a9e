"""The one document bootstrap: it covers the truth at its nominal rate, resamples whole documents whatever the memory
budget, and a column's interval does not depend on the columns beside it."""

from __future__ import annotations

import numpy as np
import pytest

from lossgap.analysis import bootstrap
from lossgap.analysis.bootstrap import ratio_interval, ratio_intervals


def test_bootstrap_covers_the_true_difference_at_the_nominal_rate():
    rng = np.random.default_rng(42)
    true_diff, covered, sims = 0.15, 0, 300
    for sim in range(sims):
        n = rng.integers(20, 400, size=80).astype(float)  # tokens per document: Pile-like spread
        doc_effect = rng.normal(0.0, 0.4, size=n.size)  # documents differ in how much the models differ
        token_noise = rng.normal(0.0, 1.0, size=n.size) * np.sqrt(n)
        delta = (true_diff + doc_effect) * n + token_noise  # per-document sum of per-token differences
        lo, hi = ratio_interval(delta, n, n_boot=400, seed=sim)
        covered += lo <= true_diff <= hi
    assert 0.90 <= covered / sims <= 0.985


def test_bootstrap_is_deterministic_and_degenerate_for_identical_models():
    delta, w = np.zeros(30), np.full(30, 10.0)
    assert ratio_interval(delta, w, 200, 0) == (0.0, 0.0)
    x = np.random.default_rng(0).normal(size=30)
    assert ratio_interval(x, w, 200, 5) == ratio_interval(x, w, 200, 5)


@pytest.mark.parametrize("budget", [20_000_000, 25 * 7])
def test_intervals_resample_whole_documents(monkeypatch, budget):
    """Each statistic is the ratio of resampled rows' sums, whatever the memory budget groups the draws into."""
    monkeypatch.setattr(bootstrap, "BUDGET", budget)
    rng = np.random.default_rng(0)
    sums, weights = rng.normal(size=(25, 3)), rng.integers(1, 9, size=25)
    lo, hi = ratio_intervals(sums, weights, 64, 1)
    idx = np.random.default_rng(1).integers(0, 25, size=(64, 25))
    ref = sums[idx].sum(axis=1) / weights[idx].sum(axis=1)[:, None]
    assert np.allclose(lo, np.quantile(ref, 0.025, axis=0)) and np.allclose(hi, np.quantile(ref, 0.975, axis=0))
    assert all(np.isnan(x).all() for x in ratio_intervals(np.zeros((0, 2)), np.zeros(0), 10, 0))


def test_a_columns_interval_does_not_depend_on_its_neighbours():
    """Bit for bit: the headline interval of a comparison and the same column inside an attribution agree."""
    rng = np.random.default_rng(3)
    delta, weights = rng.normal(size=40), rng.integers(5, 50, size=40).astype(np.float64)
    alone = ratio_interval(delta, weights, 300, 7)
    together = ratio_intervals(np.column_stack([rng.normal(size=40), delta, rng.normal(size=40)]), weights, 300, 7)
    assert alone == (together[0][1], together[1][1])


def test_each_compared_model_has_one_seed_for_the_headline_and_the_explanation():
    """results.py (the headline) and explanation.py (the attribution) both take comparison_seed, so D is drawn from
    the same documents in both places (tests/e2e/test_explain.py checks the two intervals agree)."""
    models = ["base", "instruct", "chat"]
    assert bootstrap.comparison_seed(7, models, "instruct") == 7 + bootstrap.MODEL_SEED_STEP
    assert bootstrap.comparison_seed(7, models, "chat") == 7 + 2 * bootstrap.MODEL_SEED_STEP
