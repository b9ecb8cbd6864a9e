"""The main findings of a comparison in plain words, each computed from the numbers in results.json."""

from __future__ import annotations

from .stats import relative_perplexity_change


def _by_key(results: dict) -> dict[str, dict]:
    return {row["key"]: row for row in results["configurations"]}


def key_findings(results: dict) -> list[str]:
    out: list[str] = []
    rows = _by_key(results)
    base = results["baseline"]
    main = rows[results["main_configuration"]]
    unit = "nats/token" if results["mode"] == "tokens" else "bits/byte"
    if results["mode"] != "tokens":
        out.append("The tokenizers differ on this corpus, so the models are compared in bits per byte only; "
                   "per-token and per-position comparisons between models are not made.")
    for name, cmp in main["comparisons"].items():
        o = cmp["overall"]
        direction = "higher" if o["diff"] > 0 else "lower" if o["diff"] < 0 else "the same"
        text = (f"On {main['computes']}, {name} has {direction} loss than {base}: {o['diff']:+.4f} {unit} "
                f"(95% CI {o['ci_low']:+.4f} to {o['ci_high']:+.4f})")
        if "relative_perplexity_change" in o:
            text += f", a {o['relative_perplexity_change']:+.1%} change in perplexity (exp(diff) - 1)"
        text += (f". {name} is worse on {o['share_docs_worse']:.0%} of {o['n_documents']} documents "
                 f"(Wilcoxon signed-rank p = {o['wilcoxon_p']:.2g}).")
        if o["ci_low"] <= 0 <= o["ci_high"]:
            text += " The interval contains 0: no difference is shown at the 95% level."
        out.append(text)

    shifted = [r for r in results["configurations"] if r["label_offset"] == 2]
    if shifted:
        worst = max((s for r in shifted for s in r["models"].values()), key=lambda s: s["mean_nll"])
        out.append(
            "The 'shifted labels' rows score token t+2 from tokens up to t: HF's forward(labels=...) shifts labels "
            "itself, so labels shifted beforehand are shifted twice. Their losses (up to "
            f"{worst['mean_nll']:.2f} nats against ln(vocab) = {worst['ln_vocab']:.2f}) are the signature of that bug; "
            "their differences say nothing about language modelling. The 'no shifting' rows are the correct "
            "next-token losses."
        )

    if results["mode"] == "tokens":
        rel = []
        for r in results["configurations"]:
            if r["label_offset"] == 1:
                for cmp in r["comparisons"].values():
                    d = cmp["overall"]["diff"]
                    rel.append(f"{r['key']}: {d:+.4f} nats = {relative_perplexity_change(d):+.1%}")
        if rel:
            out.append("Relative perplexity change is exp(diff) - 1, not diff: " + "; ".join(rel)
                       + f". For the seed's own table: +0.144 nats is {relative_perplexity_change(0.144):+.1%} and "
                       f"+0.184 is {relative_perplexity_change(0.184):+.1%}, so its '5-15 %' does not follow from it.")

    for leak in results["leakage"]:
        if leak["label_offset"] != 1:
            continue
        for name, buckets in leak["models"].items():
            total = next(b for b in buckets if b["bucket"] == "all")
            first = next((b for b in buckets if b["bucket"] == "1"), None)
            early = sum(b["share_of_abs_diff"] for b in buckets if b["bucket"] in ("1", "2", "3", "4"))
            early_tokens = sum(b["share_tokens"] for b in buckets if b["bucket"] in ("1", "2", "3", "4"))
            only = "only " if abs(total["mean_diff"]) < 0.01 else ""
            text = (f"Cross-document attention ({name}): the causal mask changes the corpus-wide mean NLL by {only}"
                    f"{total['mean_diff']:+.4f} nats (mean |change| {total['mean_abs_diff']:.4f})")
            if first:
                text += (f", but the first target of each document (position 1, {first['share_tokens']:.2%} of tokens) "
                         f"by {first['mean_diff']:+.3f} nats")
            if total["mean_abs_diff"]:
                text += (f"; positions 1-4 ({early_tokens:.1%} of tokens) carry {early:.0%} of the total absolute "
                         "change")
            out.append(text + ". The corpus-wide mean alone does not show where leakage acts.")

    single, block = rows.get("next-single-causal"), rows.get("next-batch-block")
    if single and block:
        s, b = single["models"][base], block["models"][base]
        gap = b["mean_nll"] - s["mean_nll"]
        share = b["truncated_context_tokens"] / max(1, b["n_tokens"])
        text = (f"On the same documents, {base}'s single-document and packed-block next-token losses differ by "
                f"{gap:+.4f} nats ({share:.1%} of packed tokens lost context at a row edge).")
        if abs(gap) < 0.1:
            text += (" Packing with a block mask barely moves the loss, so it cannot explain the seed's 0.54-nat gap "
                     "between its single-document (2.514) and batch (3.051) rows: those rows scored different text.")
        out.append(text)

    for name, cmp in main["comparisons"].items():
        doms = [(d, c["diff"]) for d, c in cmp["per_domain"].items() if c["n_documents"] > 0]
        if len(doms) > 1:
            hi, lo = max(doms, key=lambda x: x[1]), min(doms, key=lambda x: x[1])
            out.append(f"By domain ({name} - {base}): largest difference on {hi[0]} ({hi[1]:+.4f} {unit}), "
                       f"smallest on {lo[0]} ({lo[1]:+.4f} {unit}).")

    levels = [d["level"] for d in results["diagnostics"]]
    if "error" in levels or "warning" in levels:
        out.append(f"Diagnostics: {levels.count('error')} errors and {levels.count('warning')} warnings; "
                   "see the Diagnostics section before trusting a row.")
    return out
