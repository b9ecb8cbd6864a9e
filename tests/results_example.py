"""A complete results.json dict shaped like analysis/results.py's output, with the seed's own numbers: what the report,
schema and findings tests build on without scoring anything."""

from __future__ import annotations

import math

from lossgap.matrix import SEED_MATRIX

LN_VOCAB = math.log(128256)
# (base loss, difference) per seed row, in SEED_MATRIX order: the seed's own numbers
SEED_NUMBERS = [(10.055, -0.288), (10.180, 0.123), (10.178, 0.123), (2.514, 0.144), (3.051, 0.184), (3.050, 0.184)]
BUCKETS = ["1", "2", "3", "4", "5-8", "9-16"]


def _model_stats(mean: float, n_tokens: int = 9000) -> dict:
    return {"n_documents": 40, "n_scored_documents": 40, "n_tokens": n_tokens, "n_bytes": 4 * n_tokens,
            "nll_sum": mean * n_tokens, "mean_nll": mean, "perplexity": math.exp(mean),
            "bits_per_byte": mean / (4 * math.log(2)), "doc_mean_nll": mean + 0.01,
            "truncated_context_tokens": 120, "ln_vocab": LN_VOCAB, "near_uniform": mean >= 0.75 * LN_VOCAB}


def _comparison(base: float, diff: float, n_docs: int = 40, n_tokens: int = 9000) -> dict:
    lo, hi = diff - 0.05, diff + 0.06
    return {"unit": "nats/token", "n_documents": n_docs, "n_tokens": n_tokens, "base": base, "other": base + diff,
            "diff": diff, "ci_low": lo, "ci_high": hi, "doc_weighted_diff": diff * 0.9, "share_docs_worse": 0.625,
            "wilcoxon_statistic": 327.0, "wilcoxon_p": 0.0123, "relative_perplexity_change": math.expm1(diff),
            "ci_relative_perplexity_change": [math.expm1(lo), math.expm1(hi)], "diff_bits_per_byte": diff / 2.77}


def _leak_rows(scale: float) -> list[dict]:
    rows = []
    for i, bucket in enumerate(BUCKETS):
        n = 40 * 2 ** max(0, i - 3)
        rows.append({"bucket": bucket, "n_tokens": n, "share_tokens": n / 400, "mean_block": 3.0 + 0.1 * i,
                     "mean_causal": 3.0 + 0.1 * i + scale / (i + 1), "mean_diff": scale / (i + 1),
                     "mean_abs_diff": 1.5 * scale / (i + 1), "share_of_abs_diff": 1 / len(BUCKETS)})
    rows.append({"bucket": "all", "n_tokens": 400, "share_tokens": 1.0, "mean_block": 3.2, "mean_causal": 3.25,
                 "mean_diff": 0.05, "mean_abs_diff": 0.2, "share_of_abs_diff": 1.0})
    return rows


def make_results(extra_model: bool = False) -> dict:
    """A complete results.json dict shaped like results.build_results' output."""
    names = ["base", "instruct"] + (["chat"] if extra_model else [])
    configurations = []
    for conf, (base_loss, diff) in zip(SEED_MATRIX, SEED_NUMBERS, strict=True):
        losses = {"base": base_loss, "instruct": base_loss + diff, "chat": base_loss + 2 * diff}
        row = {**conf.to_dict(), "models": {n: _model_stats(losses[n]) for n in names}, "comparisons": {}}
        for n in names[1:]:
            d = losses[n] - base_loss
            row["comparisons"][n] = {"overall": _comparison(base_loss, d), "per_domain": {
                "Github": _comparison(base_loss, d + 0.02, 25, 6000),
                "Pile-CC": _comparison(base_loss, d - 0.03, 15, 3000),
                "Empty": {**_comparison(base_loss, d, 0, 0), "diff": None, "ci_low": None, "ci_high": None,
                          "relative_perplexity_change": None, "ci_relative_perplexity_change": [None, None]},
            }}
        configurations.append(row)
    configurations[5]["comparisons"]["instruct"]["overall"]["wilcoxon_p"] = None
    configurations[3]["models"]["base"]["doc_mean_nll"] = None
    profile = {n: [{"bucket": b, "n_tokens": 40 * (i + 1), "mean_nll": 3.5 - 0.1 * i + 0.05 * k}
                   for i, b in enumerate(BUCKETS)] for k, n in enumerate(names)}
    edges = [-0.4 + 0.1 * i for i in range(9)]
    return {
        "schema_version": 1,
        "baseline": "base",
        "models": {n: {"spec": f"org/{n}", "name": f"org/{n}", "model_type": "llama", "vocab_size": 128256,
                       "n_params": 8_030_261_248, "dtype": "bfloat16", "device": "cuda",
                       "attn_implementation": "sdpa", "max_positions": 131072} for n in names},
        "mode": "tokens",
        "main_configuration": "next-batch-block",
        "configurations": configurations,
        "leakage": [{"label_offset": 1, "block": "next-batch-block", "causal": "next-batch-causal",
                     "models": {n: _leak_rows(0.5 + 0.2 * k) for k, n in enumerate(names)}}],
        "position_profile": {"configuration": "next-batch-block", "models": profile},
        "doc_difference_histogram": {"configuration": "next-batch-block", "models": {
            n: {"edges": edges, "counts": [1, 0, 3, 7, 12, 9, 5, 2]} for n in names[1:]}},
        "tokenizers": {n: {"compatible": True, "differences": ["instruct adds 2 tokens: ['<|eot_id|>']"],
                           "special_tokens": {}, "vocab_sizes": {"base": 128256, n: 128258},
                           "documents_checked": 40, "documents_tokenized_differently": 0,
                           "added_tokens_seen_in_corpus": [], "verdict": "token-level comparison is valid"}
                       for n in names[1:]},
        "diagnostics": [
            {"level": "warning", "code": "near_uniform", "where": "shifted-single-causal / base",
             "message": "mean NLL 10.055 is near ln(vocab) = 11.762: targets are likely misaligned"},
            {"level": "info", "code": "mask_probe", "where": "next-batch-block / base",
             "message": "mask probe passed | <script>alert('x')</script> & friends"},
        ],
        "settings": {"bootstrap": 1000, "seed": 0,
                     "corpus": {"path": "/data/pile/val.jsonl.zst", "text_field": "text", "sample": 2000},
                     "seq_len": 8192, "versions": {"lossgap": "0.1.0", "torch": "2.13.0"}},
        "findings": ["On next-token loss, instruct has higher loss than base: +0.1840 nats/token.",
                     "Relative perplexity change is exp(diff) - 1: +0.144 nats is +15.5%."],
    }
