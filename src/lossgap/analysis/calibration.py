"""Is each model's confidence worth what it claims? Reliability diagrams and expected calibration error from the
top-1 probability, entropy beside NLL, and how much of the difference D comes from tokens where the other model
was confident and wrong (an instruct model that is sure of a chat-style continuation that the text does not take).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

CONFIDENT = 0.9


def reliability(p_argmax, argmax, target, n_bins: int = 10) -> dict:
    """Top-1 probability binned into `n_bins` equal-width bins [i/n, (i+1)/n) (the last includes 1): per bin the
    token count, mean confidence and accuracy (share with argmax == target); ECE = sum_bins count/N x |accuracy -
    confidence|."""
    p = np.asarray(p_argmax, dtype=np.float64)
    correct = (np.asarray(argmax) == np.asarray(target)).astype(np.float64)
    n = p.size
    bins = np.searchsorted(np.arange(1, n_bins) / n_bins, p, side="right")
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=p, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    rows, ece = [], 0.0
    for i in range(n_bins):
        conf = conf_sum[i] / count[i] if count[i] else math.nan
        acc = acc_sum[i] / count[i] if count[i] else math.nan
        if count[i]:
            ece += count[i] / n * abs(acc - conf)
        rows.append({"low": i / n_bins, "high": (i + 1) / n_bins, "n_tokens": int(count[i]),
                     "confidence": float(conf), "accuracy": float(acc)})
    return {"n_tokens": int(n), "bins": rows, "ece": float(ece) if n else math.nan,
            "accuracy": float(correct.mean()) if n else math.nan,
            "mean_confidence": float(p.mean()) if n else math.nan}


def model_calibration(p_argmax, argmax, target, entropy, nll, n_bins: int = 10) -> dict:
    """The reliability diagram and ECE of one model, with its mean entropy beside its mean NLL (entropy below NLL:
    the model is more sure than it is right, on average)."""
    out = reliability(p_argmax, argmax, target, n_bins)
    entropy, nll = np.asarray(entropy, dtype=np.float64), np.asarray(nll, dtype=np.float64)
    out["mean_entropy"] = float(entropy.mean()) if entropy.size else math.nan
    out["mean_nll"] = float(nll.mean()) if nll.size else math.nan
    return out


def confident_and_wrong(nll_b, nll_o, p_argmax, argmax, target, threshold: float = CONFIDENT) -> dict:
    """The part of D = mean(nll_o - nll_b) from tokens where the model given by p_argmax/argmax put more than
    `threshold` on its top-1 token and that token was not the target: sum of their delta / N, and that over D."""
    delta = np.asarray(nll_o, dtype=np.float64) - np.asarray(nll_b, dtype=np.float64)
    sel = (np.asarray(p_argmax, dtype=np.float64) > threshold) & (np.asarray(argmax) != np.asarray(target))
    n = delta.size
    diff = float(delta.sum() / n) if n else math.nan
    contribution = float(delta[sel].sum() / n) if n else math.nan
    return {"threshold": threshold, "n_tokens": int(sel.sum()),
            "share_tokens": float(sel.sum() / n) if n else math.nan,
            "mean_delta": float(delta[sel].mean()) if sel.any() else math.nan,
            "contribution": contribution, "diff": diff,
            "share_of_diff": contribution / diff if n and diff else math.nan}


def calibration_report(tokens: Mapping[str, np.ndarray], n_bins: int = 10, threshold: float = CONFIDENT) -> dict:
    """Both models' calibration, and the share of D from tokens where the other model (and, for comparison, the
    baseline) was confident and wrong."""
    t = tokens
    return {
        "base": model_calibration(t["p_argmax_b"], t["argmax_b"], t["target"], t["entropy_b"], t["nll_b"], n_bins),
        "other": model_calibration(t["p_argmax_o"], t["argmax_o"], t["target"], t["entropy_o"], t["nll_o"], n_bins),
        "other_confident_wrong": confident_and_wrong(t["nll_b"], t["nll_o"], t["p_argmax_o"], t["argmax_o"],
                                                     t["target"], threshold),
        "base_confident_wrong": confident_and_wrong(t["nll_b"], t["nll_o"], t["p_argmax_b"], t["argmax_b"],
                                                    t["target"], threshold),
    }
