"""How far apart two models' next-token distributions are on the same tokens: llama.cpp's KL-divergence statistics
(llama-perplexity --kl-divergence) from the per-token columns of docs/design.md, contract 8, overall and per domain.

Standard errors are the sample standard deviation / sqrt(n) (ddof=1). llama.cpp writes the same quantity as
sqrt((sum x^2/n - mean^2) / (n - 1)): the population variance over n - 1 is the sample variance over n. Its "Same
top p" error sqrt(p (1 - p) / (n - 1)) is the same formula applied to a 0/1 variable. llama.cpp's percentiles
interpolate linearly between sorted values, as np.percentile does by default. Beside these standard errors, which
treat tokens as independent, paired bootstrap intervals resample documents (tokens of a document are correlated).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .bootstrap import ratio_intervals

KL_PERCENTILES = (("max", 100.0), ("p99.9", 99.9), ("p99", 99.0), ("p95", 95.0), ("p90", 90.0), ("median", 50.0),
                  ("p10", 10.0), ("p5", 5.0), ("p1", 1.0), ("p0.1", 0.1), ("min", 0.0))
DELTA_P_PERCENTILES = (("max", 100.0), ("p99.9", 99.9), ("p99", 99.0), ("p95", 95.0), ("p90", 90.0),
                       ("p75", 75.0), ("median", 50.0), ("p25", 25.0), ("p10", 10.0), ("p5", 5.0), ("p1", 1.0),
                       ("p0.1", 0.1), ("min", 0.0))


def standard_error(values) -> float:
    """Sample standard deviation / sqrt(n); NaN below two values."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan


def describe(values, percentiles=KL_PERCENTILES) -> dict:
    """n, mean, its standard error, the sample standard deviation and the named percentiles."""
    values = np.asarray(values, dtype=np.float64)
    out = {"n": int(values.size), "mean": float(values.mean()) if values.size else math.nan,
           "se": standard_error(values), "std": float(values.std(ddof=1)) if values.size > 1 else math.nan}
    if values.size:
        qs = np.percentile(values, [q for _, q in percentiles])
        out.update({name: float(v) for (name, _), v in zip(percentiles, qs, strict=True)})
    else:
        out.update({name: math.nan for name, _ in percentiles})
    return out


def delta_p_stats(p_target_b, p_target_o) -> dict:
    """Δp = p_o(target) - p_b(target): mean ± standard error, percentiles, and RMS ± its standard error (llama.cpp:
    the error of mean(Δp^2) carried through the square root, se / (2 RMS))."""
    dp = np.asarray(p_target_o, dtype=np.float64) - np.asarray(p_target_b, dtype=np.float64)
    out = describe(dp, DELTA_P_PERCENTILES)
    rms = math.sqrt(float(np.mean(dp * dp))) if dp.size else math.nan
    out["rms"] = rms
    out["rms_se"] = standard_error(dp * dp) / (2 * rms) if rms > 0 else math.nan
    return out


def same_top(agree) -> dict:
    """Share of tokens where both models' top-1 tokens are the same, ± the binomial standard error
    sqrt(p (1 - p) / (n - 1)) (= std(ddof=1) / sqrt(n) of the 0/1 values)."""
    agree = np.asarray(agree, dtype=bool)
    n = agree.size
    p = float(agree.mean()) if n else math.nan
    return {"n": int(n), "n_same": int(agree.sum()), "share": p,
            "se": math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else math.nan}


def logprob_correlation(nll_b, nll_o) -> float:
    """Pearson correlation of the two models' per-token log-probabilities of the target (NaN when either is
    constant)."""
    a, b = np.asarray(nll_b, dtype=np.float64), np.asarray(nll_o, dtype=np.float64)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(-a, -b)[0, 1])


def divergence_stats(tokens: Mapping[str, np.ndarray], n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """llama.cpp's set for one selection of tokens, plus document-bootstrap intervals of mean KL (both directions),
    top-1 agreement and mean Δp (each the ratio of resampled documents' sums to their token counts; one draw per
    document shared by the four)."""
    t = tokens
    dp = np.asarray(t["p_target_o"], dtype=np.float64) - np.asarray(t["p_target_b"], dtype=np.float64)
    delta = np.asarray(t["nll_o"], dtype=np.float64) - np.asarray(t["nll_b"], dtype=np.float64)
    out = {
        "n_tokens": int(dp.size),
        "kl_bo": describe(t["kl_bo"]),
        "kl_ob": describe(t["kl_ob"]),
        "delta_p": delta_p_stats(t["p_target_b"], t["p_target_o"]),
        "same_top": same_top(t["top1_agree"]),
        "delta_nll": {"mean": float(delta.mean()) if delta.size else math.nan, "se": standard_error(delta)},
        "logprob_correlation": logprob_correlation(t["nll_b"], t["nll_o"]),
    }
    docs, idx = np.unique(np.asarray(t["doc_id"]), return_inverse=True)
    out["n_documents"] = int(docs.size)
    columns = [np.asarray(t["kl_bo"], dtype=np.float64), np.asarray(t["kl_ob"], dtype=np.float64),
               np.asarray(t["top1_agree"], dtype=np.float64), dp]
    sums = np.column_stack([np.bincount(idx, weights=c, minlength=docs.size) for c in columns])
    lo, hi = ratio_intervals(sums, np.bincount(idx, minlength=docs.size), n_boot, seed, level)
    for j, key in enumerate(("kl_bo", "kl_ob", "same_top", "delta_p")):  # intervals of the mean (share)
        out[key]["ci_low"], out[key]["ci_high"] = float(lo[j]), float(hi[j])
    return out


def divergence_report(tokens: Mapping[str, np.ndarray], doc_domain: Mapping[int, str] | None = None,
                      n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """divergence_stats overall and per domain (domain i gets seed + 1 + i, as documents.compare_docs)."""
    out = {"overall": divergence_stats(tokens, n_boot, seed, level), "per_domain": {}}
    if doc_domain is None:
        return out
    doc_id = np.asarray(tokens["doc_id"])
    docs, idx = np.unique(doc_id, return_inverse=True)
    domain_of_doc = np.array([str(doc_domain[int(d)]) for d in docs], dtype=object)
    token_domain = domain_of_doc[idx]
    for i, domain in enumerate(sorted(set(domain_of_doc.tolist()))):
        sel = token_domain == domain
        part = {key: np.asarray(v)[sel] for key, v in tokens.items()}
        out["per_domain"][domain] = divergence_stats(part, n_boot, seed + 1 + i, level)
    return out
