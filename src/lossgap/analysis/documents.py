"""Two models over the same documents: one run's per-document sums (documents.parquet) and the difference between two
runs, overall and per domain, with a paired document-bootstrap interval, the share of documents that got worse and a
Wilcoxon signed-rank test.

Everything here is deterministic given the files and the settings in compare.json, so `lossgap report DIR`
reproduces results.json exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from scipy import stats as sps

from ..formats.schema import TOKENS, unit_of
from .bootstrap import ratio_interval
from .stats import aggregate, document_columns, relative_perplexity_change

NEAR_UNIFORM = 0.75  # mean NLL at or above this share of ln(vocab) is flagged


@dataclass
class RunDocuments:
    """One run's documents.parquet as arrays, sorted by doc_id (what run/store.py's DocumentSums wrote); `sums`
    holds the per-document sums of the aggregated token columns (columns.py) by their documents.parquet name."""

    doc_id: np.ndarray
    domain: np.ndarray
    n_tokens: np.ndarray
    n_bytes: np.ndarray
    sums: dict[str, np.ndarray]

    @classmethod
    def from_table(cls, documents: pa.Table) -> RunDocuments:
        t = documents.sort_by("doc_id")
        n_tokens, n_bytes, sums = document_columns(t)
        return cls(t.column("doc_id").to_numpy(), np.asarray(t.column("domain").to_pylist(), dtype=object),
                   n_tokens, n_bytes, sums)

    @property
    def nll_sum(self) -> np.ndarray:
        return self.sums["nll_sum"]

    def summary(self) -> dict:
        return aggregate(self.n_tokens, self.n_bytes, self.sums)


def wilcoxon(per_doc_diff: np.ndarray) -> tuple[float, float]:
    """Wilcoxon signed-rank test of per-document differences; identical models give (0, 1)."""
    nonzero = per_doc_diff[per_doc_diff != 0]
    if nonzero.size == 0:
        return 0.0, 1.0
    res = sps.wilcoxon(nonzero)
    return float(res.statistic), float(res.pvalue)


def compare_docs(base: RunDocuments, other: RunDocuments, mode: str, n_boot: int, seed: int) -> dict:
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


def _compare(base: RunDocuments, other: RunDocuments, sel: np.ndarray, mode: str, n_boot: int, seed: int) -> dict:
    a, b = base.nll_sum[sel], other.nll_sum[sel]
    bits = np.log(2) * base.n_bytes[sel]
    if mode == TOKENS:
        weight, weight_b = base.n_tokens[sel].astype(np.float64), other.n_tokens[sel].astype(np.float64)
    else:
        weight, weight_b = bits.astype(np.float64), bits.astype(np.float64)
    delta = b - a
    diff = float(delta.sum() / weight.sum()) if weight.sum() else float("nan")
    per_doc = b / weight_b - a / weight
    lo, hi = ratio_interval(delta, weight, n_boot, seed)
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


def near_uniform(mean_nll: float, vocab_size: int) -> bool:
    return math.isfinite(mean_nll) and mean_nll >= NEAR_UNIFORM * math.log(vocab_size)
