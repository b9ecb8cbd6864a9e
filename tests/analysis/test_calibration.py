"""Reliability diagrams, ECE by hand, and the share of D from confident mistakes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lossgap.analysis.calibration import calibration_report, confident_and_wrong, model_calibration, reliability


def test_reliability_and_ece_by_hand():
    p = np.array([0.05, 0.15, 0.15, 0.95, 0.95, 0.95, 0.95, 1.0, 0.3])
    argmax = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9])
    target = np.array([0, 2, 0, 4, 5, 6, 0, 8, 9])
    res = reliability(p, argmax, target)
    bins = res["bins"]
    assert len(bins) == 10 and [b["n_tokens"] for b in bins] == [1, 2, 0, 1, 0, 0, 0, 0, 0, 5]
    assert bins[0]["accuracy"] == 0 and bins[1]["accuracy"] == 0.5 and bins[9]["accuracy"] == 0.8
    assert bins[3]["low"] == 0.3 and bins[3]["accuracy"] == 1.0  # 0.3 opens the bin [0.3, 0.4)
    assert bins[9]["confidence"] == pytest.approx((4 * 0.95 + 1.0) / 5)
    assert np.isnan(bins[2]["confidence"]) and np.isnan(bins[2]["accuracy"])
    ece = (1 * abs(0 - 0.05) + 2 * abs(0.5 - 0.15) + 1 * abs(1 - 0.3) + 5 * abs(0.8 - 0.96)) / 9
    assert res["ece"] == pytest.approx(ece)
    assert res["accuracy"] == pytest.approx(6 / 9) and res["mean_confidence"] == pytest.approx(p.mean())


def test_a_calibrated_model_has_small_ece():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    correct = rng.random(p.size) < p
    target = np.zeros(p.size, dtype=np.int64)
    argmax = np.where(correct, 0, 1)
    assert reliability(p, argmax, target)["ece"] < 0.01
    assert reliability(np.full(p.size, 0.99), argmax, target)["ece"] == pytest.approx(0.99 - correct.mean())


def test_model_calibration_reports_entropy_beside_nll():
    res = model_calibration([0.5, 0.9], [1, 2], [1, 0], [1.0, 2.0], [0.5, 3.0])
    assert res["mean_entropy"] == 1.5 and res["mean_nll"] == 1.75 and res["accuracy"] == 0.5


def test_confident_and_wrong_share_of_d():
    nll_b = np.array([1.0, 1.0, 1.0, 1.0])
    nll_o = np.array([3.0, 1.5, 0.5, 1.0])
    p_o = np.array([0.95, 0.95, 0.5, 0.99])
    argmax_o = np.array([7, 1, 9, 3])
    target = np.array([1, 1, 2, 3])
    res = confident_and_wrong(nll_b, nll_o, p_o, argmax_o, target)
    assert res["n_tokens"] == 1 and res["share_tokens"] == 0.25  # only the first: confident, argmax != target
    assert res["diff"] == pytest.approx(2.0 / 4) and res["contribution"] == pytest.approx(2.0 / 4)
    assert res["share_of_diff"] == pytest.approx(1.0) and res["mean_delta"] == 2.0
    none = confident_and_wrong(nll_b, nll_o, p_o, target, target)
    assert none["n_tokens"] == 0 and none["contribution"] == 0


def test_report_for_both_models():
    rng = np.random.default_rng(1)
    n = 500
    t = {"target": rng.integers(0, 5, n), "argmax_b": rng.integers(0, 5, n), "argmax_o": rng.integers(0, 5, n),
         "p_argmax_b": rng.random(n), "p_argmax_o": rng.random(n), "entropy_b": rng.random(n),
         "entropy_o": rng.random(n), "nll_b": rng.random(n), "nll_o": rng.random(n)}
    res = calibration_report(t)
    assert set(res) == {"base", "other", "other_confident_wrong", "base_confident_wrong"}
    assert sum(b["n_tokens"] for b in res["other"]["bins"]) == n
    assert res["other"]["ece"] == reliability(t["p_argmax_o"], t["argmax_o"], t["target"])["ece"]
    json.dumps(res)
    same = dict(t, nll_o=t["nll_b"])
    assert calibration_report(same)["other_confident_wrong"]["contribution"] == 0
