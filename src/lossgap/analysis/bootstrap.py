"""The document bootstrap behind every interval lossgap prints: documents are resampled with replacement (the tokens
of a document are correlated, so resampling tokens would understate the spread), and each statistic is a ratio of the
resampled documents' sums, e.g. the summed loss difference over the summed tokens.

One draw of documents serves every column of a call, so the intervals of one call describe the same resamples; the
same seed and documents give the same draws in every call. Each column's resampled sums are gathered and summed in
the same order whatever the number of columns, so a column's interval does not depend on the others beside it.
"""

from __future__ import annotations

import math

import numpy as np

BUDGET = 20_000_000  # resampled document indices held at once (160 MB of int64)
LEVEL = 0.95
MODEL_SEED_STEP = 1000  # seeds apart between the compared models (compare_docs adds 1 + i for domain i)


def comparison_seed(seed: int, models: list[str], name: str) -> int:
    """The bootstrap seed of `name`'s comparison with the baseline, from the run's seed and the model's place in
    compare.json's models. The headline (documents.compare_docs) and the explanation (attribution) both take it, so
    the same documents are drawn and D gets one interval wherever the report shows it."""
    return seed + MODEL_SEED_STEP * list(models).index(name)


def ratio_intervals(sums, weights, n_boot: int, seed: int, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile intervals of sums[:, k].sum() / weights.sum() with documents (rows) resampled with replacement.
    `sums` is [documents] or [documents, columns]; returns (low, high), one entry per column."""
    sums = np.asarray(sums, dtype=np.float64)
    columns = sums[:, None] if sums.ndim == 1 else sums
    weights = np.asarray(weights, dtype=np.float64)
    n_docs, k = columns.shape
    if n_docs == 0 or n_boot <= 0:
        return np.full(k, math.nan), np.full(k, math.nan)
    columns = [np.ascontiguousarray(columns[:, j]) for j in range(k)]
    rng = np.random.default_rng(seed)
    per_chunk = max(1, BUDGET // n_docs)
    stats = np.empty((n_boot, k))
    for start in range(0, n_boot, per_chunk):
        m = min(per_chunk, n_boot - start)
        idx = rng.integers(0, n_docs, size=(m, n_docs))
        total = np.take(weights, idx).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            for j, column in enumerate(columns):
                stats[start:start + m, j] = np.take(column, idx).sum(axis=1) / total
    alpha = (1 - level) / 2
    return np.quantile(stats, alpha, axis=0), np.quantile(stats, 1 - alpha, axis=0)


def ratio_interval(sums, weights, n_boot: int, seed: int, level: float = LEVEL) -> tuple[float, float]:
    """ratio_intervals of one column, as two floats."""
    lo, hi = ratio_intervals(np.asarray(sums, dtype=np.float64).reshape(-1, 1), weights, n_boot, seed, level)
    return float(lo[0]), float(hi[0])
