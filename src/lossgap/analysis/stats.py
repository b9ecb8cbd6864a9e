"""Summary statistics from per-document sums (docs/design.md, contract 6: nats/token, perplexity = exp(mean), bits
per byte)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from ..formats.columns import AGGREGATED, MEAN, TOTAL


def perplexity(mean_nll: float) -> float:
    """exp(mean NLL); inf above ~709.78 nats, where exp overflows a float (JSON holds it as schema.INF)."""
    if math.isnan(mean_nll):
        return float("nan")
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf


def bits_per_byte(nll_sum: float, n_bytes: int) -> float:
    return nll_sum / (math.log(2) * n_bytes) if n_bytes else float("nan")


def relative_perplexity_change(delta_nll: float) -> float:
    """exp(delta) - 1: +0.144 nats is +15.5 % perplexity; inf above ~709.78 nats, where exp overflows a float."""
    try:
        return math.expm1(delta_nll)
    except OverflowError:
        return math.inf


def aggregate(n_tokens: np.ndarray, n_bytes: np.ndarray, sums: dict[str, np.ndarray]) -> dict:
    """Token-weighted mean NLL (the default), the document-weighted mean over documents with scored tokens, and each
    declared per-token column's total or mean (columns.py) from the per-document sums in `sums`."""
    nll_sum = sums["nll_sum"]
    tokens = int(n_tokens.sum())
    total = float(nll_sum.sum())
    mean = total / tokens if tokens else float("nan")
    scored = n_tokens > 0
    doc_mean = float((nll_sum[scored] / n_tokens[scored]).mean()) if scored.any() else float("nan")
    out = {
        "n_documents": int(n_tokens.size),
        "n_scored_documents": int(scored.sum()),
        "n_tokens": tokens,
        "n_bytes": int(n_bytes.sum()),
        "nll_sum": total,
        "mean_nll": mean,
        "perplexity": perplexity(mean),
        "bits_per_byte": bits_per_byte(total, int(n_bytes.sum())),
        "doc_mean_nll": doc_mean,
    }
    for c in AGGREGATED:
        if c.summary == TOTAL and c.per_document in sums:
            out[c.summary_key] = int(sums[c.per_document].sum())
        elif c.summary == MEAN and c.per_document in sums:
            out[c.summary_key] = float(sums[c.per_document].sum()) / tokens if tokens else float("nan")
    return out


def document_columns(documents: pa.Table) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(n_tokens, n_bytes, per-document sums by column) of a documents table: the inputs of `aggregate`."""
    sums = {c.per_document: documents.column(c.per_document).to_numpy() for c in AGGREGATED
            if c.per_document in documents.column_names}
    return documents.column("n_tokens").to_numpy(), documents.column("n_bytes").to_numpy(), sums


def summarize_documents(documents: pa.Table) -> tuple[dict, dict[str, dict]]:
    """(overall, per-domain) statistics from a documents table."""
    n_tokens, n_bytes, sums = document_columns(documents)
    domains = np.asarray(documents.column("domain").to_pylist(), dtype=object)
    overall = aggregate(n_tokens, n_bytes, sums)
    per_domain = {}
    for domain in sorted(set(domains.tolist())):
        sel = domains == domain
        per_domain[domain] = aggregate(n_tokens[sel], n_bytes[sel], {k: v[sel] for k, v in sums.items()})
    return overall, per_domain


def histogram(values: np.ndarray, bins: int = 40) -> dict:
    """Counts of `values` in `bins` equal-width bins over their range (one unit wide around a single value)."""
    if values.size == 0:
        return {"edges": [], "counts": []}
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return {"edges": edges.tolist(), "counts": counts.tolist()}
