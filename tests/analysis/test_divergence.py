"""llama.cpp's KL statistics: the same numbers numpy gives, zero for identical models, seeded intervals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lossgap.analysis.divergence import (
    DELTA_P_PERCENTILES,
    KL_PERCENTILES,
    delta_p_stats,
    describe,
    divergence_report,
    divergence_stats,
    logprob_correlation,
    same_top,
    standard_error,
)


def fake_tokens(seed: int, n_docs: int = 40, identical: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, size=n_docs)
    doc_id = np.repeat(np.arange(n_docs) * 3, lengths)
    n = doc_id.size
    nll_b = rng.gamma(2.0, 1.0, size=n)
    nll_o = nll_b if identical else (nll_b + rng.normal(0.1, 0.5, size=n)).clip(0)
    kl = np.zeros(n) if identical else rng.gamma(0.5, 0.2, size=n)
    return {"doc_id": doc_id, "nll_b": nll_b.astype(np.float32), "nll_o": nll_o.astype(np.float32),
            "p_target_b": np.exp(-nll_b).astype(np.float32), "p_target_o": np.exp(-nll_o).astype(np.float32),
            "kl_bo": kl.astype(np.float32), "kl_ob": (kl * 1.1).astype(np.float32),
            "top1_agree": np.ones(n, bool) if identical else rng.random(n) < 0.7}


def test_describe_equals_numpy():
    values = np.random.default_rng(0).gamma(0.5, 0.3, size=1001)
    d = describe(values)
    assert d["n"] == 1001 and d["mean"] == pytest.approx(values.mean())
    assert d["se"] == pytest.approx(values.std(ddof=1) / math.sqrt(values.size))
    assert d["std"] == pytest.approx(values.std(ddof=1))
    for name, q in KL_PERCENTILES:
        assert d[name] == pytest.approx(np.percentile(values, q))
    assert d["max"] == values.max() and d["min"] == values.min() and d["median"] == pytest.approx(np.median(values))


def test_standard_error_is_llama_cpps_formula():
    """llama.cpp: sqrt((sum x^2 / n - mean^2) / (n - 1)), the same as std(ddof=1) / sqrt(n)."""
    x = np.random.default_rng(1).normal(size=500)
    n = x.size
    llama = math.sqrt(((x * x).sum() / n - x.mean() ** 2) / (n - 1))
    assert standard_error(x) == pytest.approx(llama, rel=1e-10)
    assert math.isnan(standard_error([1.0]))


def test_percentiles_interpolate_like_llama_cpp():
    """llama.cpp's percentile(): p = f (n - 1), linear between the neighbouring sorted values."""
    x = np.sort(np.random.default_rng(2).random(137))
    for _, q in DELTA_P_PERCENTILES:
        p = q / 100 * (x.size - 1)
        i = int(p)
        expect = (1 - (p - i)) * x[i] + (p - i) * x[min(i + 1, x.size - 1)]
        assert describe(x, DELTA_P_PERCENTILES)[_] == pytest.approx(expect)


def test_delta_p_and_same_top_by_hand():
    pb, po = np.array([0.5, 0.2, 0.9, 0.4]), np.array([0.6, 0.1, 0.9, 0.8])
    dp = po - pb
    d = delta_p_stats(pb, po)
    assert d["mean"] == pytest.approx(dp.mean()) and d["se"] == pytest.approx(dp.std(ddof=1) / 2)
    assert d["rms"] == pytest.approx(math.sqrt((dp ** 2).mean()))
    assert d["rms_se"] == pytest.approx((dp ** 2).std(ddof=1) / 2 / (2 * d["rms"]))
    assert d["p75"] == pytest.approx(np.percentile(dp, 75))
    s = same_top([True, True, False, True])
    assert s["share"] == 0.75 and s["n_same"] == 3
    assert s["se"] == pytest.approx(math.sqrt(0.75 * 0.25 / 3))
    assert s["se"] == pytest.approx(np.array([1, 1, 0, 1.0]).std(ddof=1) / 2)


def test_correlation_of_log_probabilities():
    rng = np.random.default_rng(3)
    a = rng.gamma(2, 1, size=300)
    b = a + rng.normal(0, 0.5, size=300)
    assert logprob_correlation(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert logprob_correlation(a, a) == pytest.approx(1.0)
    assert math.isnan(logprob_correlation(a, np.ones_like(a)))


def test_identical_models_diverge_by_nothing():
    res = divergence_stats(fake_tokens(0, identical=True), n_boot=50)
    for key in ("kl_bo", "kl_ob"):
        assert all(res[key][name] == 0 for name, _ in KL_PERCENTILES)
        assert res[key]["mean"] == 0 and res[key]["se"] == 0 and res[key]["ci_low"] == res[key]["ci_high"] == 0
    assert res["delta_p"]["mean"] == 0 and res["delta_p"]["rms"] == 0 and res["delta_p"]["max"] == 0
    assert res["same_top"]["share"] == 1.0 and res["same_top"]["se"] == 0
    assert res["delta_nll"] == {"mean": 0.0, "se": 0.0}
    assert res["logprob_correlation"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_intervals_contain_the_estimates_and_repeat_with_the_seed(seed):
    t = fake_tokens(seed)
    a, b = divergence_stats(t, n_boot=300, seed=seed), divergence_stats(t, n_boot=300, seed=seed)
    assert json.dumps(a) == json.dumps(b)
    assert a != divergence_stats(t, n_boot=300, seed=seed + 1)
    for key, field in (("kl_bo", "mean"), ("kl_ob", "mean"), ("same_top", "share"), ("delta_p", "mean")):
        assert a[key]["ci_low"] <= a[key][field] <= a[key]["ci_high"], key
    assert a["n_documents"] == 40 and a["n_tokens"] == t["doc_id"].size


def test_report_per_domain():
    t = fake_tokens(4)
    domains = {int(d): "odd" if d % 2 else "even" for d in np.unique(t["doc_id"])}
    res = divergence_report(t, domains, n_boot=40, seed=7)
    assert set(res["per_domain"]) == {"even", "odd"}
    n = sum(r["n_tokens"] for r in res["per_domain"].values())
    assert n == res["overall"]["n_tokens"]
    sel = np.array([domains[int(d)] == "even" for d in t["doc_id"]])
    assert res["per_domain"]["even"]["kl_bo"]["mean"] == pytest.approx(t["kl_bo"][sel].astype(np.float64).mean())
    assert res["overall"] == divergence_stats(t, n_boot=40, seed=7)
    assert res["per_domain"]["even"] == divergence_stats({k: v[sel] for k, v in t.items()}, n_boot=40, seed=8)
    assert divergence_report(t)["per_domain"] == {}
