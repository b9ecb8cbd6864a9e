"""Statistics: the paired bootstrap covers the truth at its nominal rate; leakage buckets are exact."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from lossgap.analysis.documents import (
    DocTable,
    bucket_labels,
    compare_docs,
    leakage_by_position,
    paired_bootstrap,
    position_bucket,
    wilcoxon,
)


def test_bootstrap_covers_the_true_difference_at_the_nominal_rate():
    rng = np.random.default_rng(42)
    true_diff, covered, sims = 0.15, 0, 300
    for sim in range(sims):
        n = rng.integers(20, 400, size=80).astype(float)  # tokens per document: Pile-like spread
        doc_effect = rng.normal(0.0, 0.4, size=n.size)  # documents differ in how much the models differ
        token_noise = rng.normal(0.0, 1.0, size=n.size) * np.sqrt(n)
        delta = (true_diff + doc_effect) * n + token_noise  # per-document sum of per-token differences
        lo, hi = paired_bootstrap(delta, n, n_boot=400, seed=sim)
        covered += lo <= true_diff <= hi
    assert 0.90 <= covered / sims <= 0.985


def test_bootstrap_is_deterministic_and_degenerate_for_identical_models():
    delta, w = np.zeros(30), np.full(30, 10.0)
    assert paired_bootstrap(delta, w, 200, 0) == (0.0, 0.0)
    x = np.random.default_rng(0).normal(size=30)
    assert paired_bootstrap(x, w, 200, 5) == paired_bootstrap(x, w, 200, 5)


def test_wilcoxon_matches_scipy_and_handles_all_zero():
    assert wilcoxon(np.zeros(10)) == (0.0, 1.0)
    x = np.random.default_rng(1).normal(0.2, 1, size=40)
    assert wilcoxon(x)[1] == pytest.approx(sps.wilcoxon(x).pvalue)


def _docs(nll_sum, n_tokens, domains):
    k = len(nll_sum)
    return DocTable(np.arange(k), np.array(domains, dtype=object), np.array(n_tokens), np.full(k, 100),
                    {"nll_sum": np.array(nll_sum, dtype=float), "truncated_context_tokens": np.zeros(k, dtype=int)})


def test_compare_docs_numbers_by_hand():
    a = _docs([10.0, 20.0, 30.0], [10, 10, 20], ["x", "x", "y"])
    b = _docs([12.0, 19.0, 36.0], [10, 10, 20], ["x", "x", "y"])
    res = compare_docs(a, b, "tokens", 500, 0)
    o = res["overall"]
    assert o["diff"] == pytest.approx((2 - 1 + 6) / 40)
    assert o["relative_perplexity_change"] == pytest.approx(np.expm1(7 / 40))
    assert o["doc_weighted_diff"] == pytest.approx((0.2 - 0.1 + 0.3) / 3)
    assert o["share_docs_worse"] == pytest.approx(2 / 3)
    assert o["base"] == pytest.approx(60 / 40) and o["other"] == pytest.approx(67 / 40)
    assert res["per_domain"]["x"]["diff"] == pytest.approx(1 / 20)
    assert res["per_domain"]["y"]["diff"] == pytest.approx(6 / 20)
    bpb = compare_docs(a, b, "bits_per_byte", 500, 0)["overall"]
    assert bpb["diff"] == pytest.approx(7 / (np.log(2) * 300)) and bpb["unit"] == "bits/byte"


def test_position_buckets():
    pos = np.array([1, 2, 3, 4, 5, 8, 9, 16, 17, 1024, 1025, 50_000])
    labels = [bucket_labels()[i] for i in position_bucket(pos)]
    assert labels == ["1", "2", "3", "4", "5-8", "5-8", "9-16", "9-16", "17-32", "513-1024", ">1024", ">1024"]


def test_leakage_by_position_by_hand():
    block = {"doc_id": np.array([0, 0, 0, 1, 1]), "pos": np.array([1, 2, 5, 1, 2]),
             "nll": np.array([5.0, 4.0, 3.0, 6.0, 2.0], dtype=np.float32)}
    causal = dict(block, nll=np.array([3.0, 4.0, 3.0, 2.0, 2.0], dtype=np.float32))
    rows = {r["bucket"]: r for r in leakage_by_position(block, causal)}
    assert rows["1"]["mean_diff"] == pytest.approx(-3.0) and rows["1"]["share_tokens"] == pytest.approx(0.4)
    assert rows["2"]["mean_diff"] == 0.0 and rows["5-8"]["n_tokens"] == 1
    assert rows["all"]["mean_diff"] == pytest.approx(-6 / 5) and rows["1"]["share_of_abs_diff"] == pytest.approx(6 / 6)
    with pytest.raises(ValueError, match="different tokens"):
        leakage_by_position(block, dict(causal, pos=np.array([1, 2, 6, 1, 2])))
