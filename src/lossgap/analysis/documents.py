"""Statistics of a comparison, computed only from the stored per-document and per-token files.

Everything here is deterministic given the files and the settings in compare.json, so `lossgap report DIR`
reproduces results.json exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
from scipy import stats as sps

from ..formats.schema import ALL_POSITIONS, TOKENS, unit_of
from .stats import aggregate, document_columns, relative_perplexity_change

BUCKET_LOWS = np.array([1, 2, 3, 4, 5, 9, 17, 33, 65, 129, 257, 513, 1025])
BUCKET_HIGHS = np.array([1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 512, 1024, np.iinfo(np.int64).max])
NEAR_UNIFORM = 0.75  # mean NLL at or above this share of ln(vocab) is flagged


def bucket_labels() -> list[str]:
    labels = []
    for lo, hi in zip(BUCKET_LOWS, BUCKET_HIGHS, strict=True):
        labels.append(str(lo) if lo == hi else (f">{lo - 1}" if hi > 1e12 else f"{lo}-{hi}"))
    return labels


def position_bucket(pos: np.ndarray) -> np.ndarray:
    """Bucket index of target positions within their document: 1, 2, 3, 4, 5-8, 9-16, ..., 513-1024, >1024."""
    return np.searchsorted(BUCKET_LOWS, pos, side="right") - 1


@dataclass
class DocTable:
    """Per-document arrays of one run, sorted by doc_id; `sums` holds the per-document sums of the aggregated token
    columns (columns.py) by their documents.parquet name."""

    doc_id: np.ndarray
    domain: np.ndarray
    n_tokens: np.ndarray
    n_bytes: np.ndarray
    sums: dict[str, np.ndarray]

    @classmethod
    def read(cls, path) -> DocTable:
        t = pq.read_table(path).sort_by("doc_id")
        n_tokens, n_bytes, sums = document_columns(t)
        return cls(t.column("doc_id").to_numpy(), np.asarray(t.column("domain").to_pylist(), dtype=object),
                   n_tokens, n_bytes, sums)

    @property
    def nll_sum(self) -> np.ndarray:
        return self.sums["nll_sum"]

    def summary(self) -> dict:
        return aggregate(self.n_tokens, self.n_bytes, self.sums)


def paired_bootstrap(delta: np.ndarray, weight: np.ndarray, n_boot: int, seed: int, level: float = 0.95):
    """Percentile CI of sum(delta)/sum(weight), resampling documents with replacement (paired: one draw per doc)."""
    if delta.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    per_chunk = max(1, 20_000_000 // delta.size)
    stats = []
    for start in range(0, n_boot, per_chunk):
        idx = rng.integers(0, delta.size, size=(min(per_chunk, n_boot - start), delta.size))
        stats.append(delta[idx].sum(axis=1) / weight[idx].sum(axis=1))
    stats = np.concatenate(stats)
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def wilcoxon(per_doc_diff: np.ndarray) -> tuple[float, float]:
    """Wilcoxon signed-rank test of per-document differences; identical models give (0, 1)."""
    nonzero = per_doc_diff[per_doc_diff != 0]
    if nonzero.size == 0:
        return 0.0, 1.0
    res = sps.wilcoxon(nonzero)
    return float(res.statistic), float(res.pvalue)


def compare_docs(base: DocTable, other: DocTable, mode: str, n_boot: int, seed: int) -> dict:
    """Difference other - base over the same documents: overall and per domain."""
    if not np.array_equal(base.doc_id, other.doc_id):
        raise ValueError("the two runs scored different documents")
    if mode == TOKENS and not np.array_equal(base.n_tokens, other.n_tokens):
        raise ValueError("the two runs scored different tokens")
    scored = (base.n_tokens > 0) & (other.n_tokens > 0)
    out = {"overall": _compare(base, other, scored, mode, n_boot, seed), "per_domain": {}}
    for i, domain in enumerate(sorted(set(base.domain.tolist()))):
        sel = scored & (base.domain == domain)
        out["per_domain"][domain] = _compare(base, other, sel, mode, n_boot, seed + 1 + i)
    return out


def _compare(base: DocTable, other: DocTable, sel: np.ndarray, mode: str, n_boot: int, seed: int) -> dict:
    a, b = base.nll_sum[sel], other.nll_sum[sel]
    bits = np.log(2) * base.n_bytes[sel]
    if mode == TOKENS:
        weight, weight_b = base.n_tokens[sel].astype(np.float64), other.n_tokens[sel].astype(np.float64)
    else:
        weight, weight_b = bits.astype(np.float64), bits.astype(np.float64)
    delta = b - a
    diff = float(delta.sum() / weight.sum()) if weight.sum() else float("nan")
    per_doc = b / weight_b - a / weight
    lo, hi = paired_bootstrap(delta, weight, n_boot, seed)
    stat, p = wilcoxon(per_doc)
    result = {
        "unit": unit_of(mode),
        "n_documents": int(sel.sum()),
        "n_tokens": int(base.n_tokens[sel].sum()),
        "base": float(a.sum() / weight.sum()) if weight.sum() else float("nan"),
        "other": float(b.sum() / weight_b.sum()) if weight_b.sum() else float("nan"),
        "diff": diff,
        "ci_low": lo,
        "ci_high": hi,
        "doc_weighted_diff": float(per_doc.mean()) if per_doc.size else float("nan"),
        "share_docs_worse": float((per_doc > 0).mean()) if per_doc.size else float("nan"),
        "wilcoxon_statistic": stat,
        "wilcoxon_p": p,
    }
    if mode == TOKENS:
        result["relative_perplexity_change"] = relative_perplexity_change(diff)
        result["ci_relative_perplexity_change"] = [relative_perplexity_change(lo), relative_perplexity_change(hi)]
    result["diff_bits_per_byte"] = float((delta.sum()) / bits.sum()) if bits.sum() else float("nan")
    return result


def read_tokens(path, columns=("doc_id", "pos", "nll")) -> dict[str, np.ndarray]:
    t = pq.read_table(path, columns=list(columns))
    return {c: t.column(c).to_numpy() for c in columns}


def leakage_by_position(block: dict, causal: dict) -> list[dict]:
    """Per position bucket: causal - block NLL of the same tokens (the same scored set: docs/design.md, contract 2)."""
    if not (np.array_equal(block["doc_id"], causal["doc_id"]) and np.array_equal(block["pos"], causal["pos"])):
        raise ValueError("block and causal runs scored different tokens")
    diff = causal["nll"].astype(np.float64) - block["nll"].astype(np.float64)
    buckets = position_bucket(block["pos"])
    total_abs = float(np.abs(diff).sum())
    rows = []
    for i, label in enumerate(bucket_labels()):
        sel = buckets == i
        n = int(sel.sum())
        if n == 0:
            continue
        rows.append({
            "bucket": label, "n_tokens": n, "share_tokens": n / diff.size,
            "mean_block": float(block["nll"][sel].mean()), "mean_causal": float(causal["nll"][sel].mean()),
            "mean_diff": float(diff[sel].mean()), "mean_abs_diff": float(np.abs(diff[sel]).mean()),
            "share_of_abs_diff": float(np.abs(diff[sel]).sum() / total_abs) if total_abs else float("nan"),
        })
    rows.append({"bucket": ALL_POSITIONS, "n_tokens": int(diff.size), "share_tokens": 1.0,
                 "mean_block": float(block["nll"].mean()), "mean_causal": float(causal["nll"].mean()),
                 "mean_diff": float(diff.mean()), "mean_abs_diff": float(np.abs(diff).mean()),
                 "share_of_abs_diff": 1.0})
    return rows


def position_profile(tokens: dict) -> list[dict]:
    """Mean NLL by position bucket within the document."""
    buckets = position_bucket(tokens["pos"])
    rows = []
    for i, label in enumerate(bucket_labels()):
        sel = buckets == i
        if sel.any():
            rows.append({"bucket": label, "n_tokens": int(sel.sum()), "mean_nll": float(tokens["nll"][sel].mean())})
    return rows


def histogram(values: np.ndarray, bins: int = 40) -> dict:
    if values.size == 0:
        return {"edges": [], "counts": []}
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def near_uniform(mean_nll: float, vocab_size: int) -> bool:
    return math.isfinite(mean_nll) and mean_nll >= NEAR_UNIFORM * math.log(vocab_size)
