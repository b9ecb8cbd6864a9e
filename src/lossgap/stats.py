"""Summary statistics from per-document sums (contract 6: nats/token, perplexity = exp(mean), bits per byte)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa


def perplexity(mean_nll: float) -> float:
    return math.exp(mean_nll) if math.isfinite(mean_nll) else float("nan")


def bits_per_byte(nll_sum: float, n_bytes: int) -> float:
    return nll_sum / (math.log(2) * n_bytes) if n_bytes else float("nan")


def relative_perplexity_change(delta_nll: float) -> float:
    """exp(delta) - 1: +0.144 nats is +15.5 % perplexity."""
    return math.expm1(delta_nll)


def aggregate(n_tokens: np.ndarray, nll_sum: np.ndarray, n_bytes: np.ndarray, truncated: np.ndarray) -> dict:
    """Token-weighted mean NLL (the default) and the document-weighted mean over documents with scored tokens."""
    tokens = int(n_tokens.sum())
    total = float(nll_sum.sum())
    mean = total / tokens if tokens else float("nan")
    scored = n_tokens > 0
    doc_mean = float((nll_sum[scored] / n_tokens[scored]).mean()) if scored.any() else float("nan")
    return {
        "n_documents": int(n_tokens.size),
        "n_scored_documents": int(scored.sum()),
        "n_tokens": tokens,
        "n_bytes": int(n_bytes.sum()),
        "nll_sum": total,
        "mean_nll": mean,
        "perplexity": perplexity(mean),
        "bits_per_byte": bits_per_byte(total, int(n_bytes.sum())),
        "doc_mean_nll": doc_mean,
        "truncated_context_tokens": int(truncated.sum()),
    }


def summarize_documents(documents: pa.Table) -> tuple[dict, dict[str, dict]]:
    """(overall, per-domain) statistics from a documents table."""
    cols = {name: documents.column(name).to_numpy() for name in
            ("n_tokens", "nll_sum", "n_bytes", "truncated_context_tokens")}
    domains = np.asarray(documents.column("domain").to_pylist(), dtype=object)
    overall = aggregate(cols["n_tokens"], cols["nll_sum"], cols["n_bytes"], cols["truncated_context_tokens"])
    per_domain = {}
    for domain in sorted(set(domains.tolist())):
        sel = domains == domain
        per_domain[domain] = aggregate(*(cols[c][sel] for c in
                                         ("n_tokens", "nll_sum", "n_bytes", "truncated_context_tokens")))
    return overall, per_domain
