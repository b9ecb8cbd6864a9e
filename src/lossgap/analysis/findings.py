"""The findings of a comparison in plain words, each computed from the numbers in results.json: the headline, the
seed's own claims checked, leakage, packing, domains, and where the difference comes from."""

from __future__ import annotations

from ..formats.schema import ALL_POSITIONS, ConfigurationRow, Results, main_row, tokens_mode, unit
from ..matrix import SEED_FIGURES, is_seed_matrix
from .explanation_findings import explanation_sentences
from .positions import EARLY_BUCKETS
from .stats import relative_perplexity_change
from .wording import all_shown_equal, interval_text, shown_as_zero


def key_findings(results: Results) -> list[str]:
    main = main_row(results)
    seed = is_seed_matrix(row["key"] for row in results["configurations"])
    out: list[str] = []
    if not tokens_mode(results):
        out.append("The tokenizers differ on this corpus, so the models are compared in bits per byte only; "
                   "per-token and per-position comparisons between models are not made.")
    out += _headline(results, main)
    out += _shifted_labels(results)
    out += _relative_change(results, seed)
    out += _leakage(results)
    out += _packing(results, seed)
    out += _domains(results, main)
    out += explanation_sentences(results)
    out += _diagnostics(results)
    return out


def _headline(results: Results, main: ConfigurationRow) -> list[str]:
    """Each compared model against the baseline on the main configuration."""
    out = []
    for name, cmp in main["comparisons"].items():
        o = cmp["overall"]
        if shown_as_zero(o["diff"]):
            out.append(f"On {main['computes']}, {name} and {results['baseline']} give the same loss on this corpus "
                       f"(D = {o['diff']:+.4f} {unit(results)}, {interval_text(o)}).")
            continue
        direction = "higher" if o["diff"] > 0 else "lower"
        text = (f"On {main['computes']}, {name} has {direction} loss than {results['baseline']}: {o['diff']:+.4f} "
                f"{unit(results)} ({interval_text(o)})")
        if "relative_perplexity_change" in o:
            text += f", a {o['relative_perplexity_change']:+.1%} change in perplexity (exp(diff) - 1)"
        text += (f". {name} is worse on {o['share_docs_worse']:.0%} of {o['n_documents']} documents "
                 f"(Wilcoxon signed-rank p = {o['wilcoxon_p']:.2g}).")
        if o["n_documents"] != 1 and o["ci_low"] <= 0 <= o["ci_high"]:
            text += " The interval contains 0: no difference is shown at the 95% level."
        out.append(text)
    return out


def _shifted_labels(results: Results) -> list[str]:
    shifted = [r for r in results["configurations"] if r["label_offset"] == 2]
    if not shifted:
        return []
    worst = max((s for r in shifted for s in r["models"].values()), key=lambda s: s["mean_nll"])
    return [
        "The 'shifted labels' rows score token t+2 from tokens up to t: HF's forward(labels=...) shifts labels "
        "itself, so labels shifted beforehand are shifted twice. Their losses (up to "
        f"{worst['mean_nll']:.2f} nats against ln(vocab) = {worst['ln_vocab']:.2f}) are the signature of that bug; "
        "their differences say nothing about language modelling. The 'no shifting' rows are the correct "
        "next-token losses."
    ]


def _relative_change(results: Results, seed: bool) -> list[str]:
    """exp(diff) - 1 for every next-token row, and for the seed's own differences when its matrix ran."""
    if not tokens_mode(results):
        return []
    rel = []
    for r in results["configurations"]:
        if r["label_offset"] == 1:
            for cmp in r["comparisons"].values():
                d = cmp["overall"]["diff"]
                rel.append(f"{r['key']}: {d:+.4f} nats = {relative_perplexity_change(d):+.1%}")
    if not rel:
        return []
    text = "Relative perplexity change is exp(diff) - 1, not diff: " + "; ".join(rel) + "."
    if seed:
        first, *rest = SEED_FIGURES.differences
        changes = [f"{first:+.3f} nats is {relative_perplexity_change(first):+.1%}"]
        changes += [f"{d:+.3f} is {relative_perplexity_change(d):+.1%}" for d in rest]
        text += (f" For the seed's own table: {' and '.join(changes)}, so its '{SEED_FIGURES.claimed_change}' "
                 "does not follow from it.")
    return [text]


def _leakage(results: Results) -> list[str]:
    """Where the causal mask changes the next-token loss: mostly at the first positions of each document."""
    out = []
    for leak in results["leakage"]:
        if leak["label_offset"] != 1:
            continue
        for name, buckets in leak["models"].items():
            total = next(b for b in buckets if b["bucket"] == ALL_POSITIONS)
            first = next((b for b in buckets if b["bucket"] == EARLY_BUCKETS[0]), None)
            early = sum(b["share_of_abs_diff"] for b in buckets if b["bucket"] in EARLY_BUCKETS)
            early_tokens = sum(b["share_tokens"] for b in buckets if b["bucket"] in EARLY_BUCKETS)
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
    return out


def _next_token_row(results: Results, layout: str, mask: str) -> ConfigurationRow | None:
    wanted = (1, layout, mask)
    return next((r for r in results["configurations"] if (r["label_offset"], r["layout"], r["mask"]) == wanted), None)


def _packing(results: Results, seed: bool) -> list[str]:
    """The baseline's single-document against its packed block-mask loss: packing done right costs little."""
    single, block = _next_token_row(results, "single", "causal"), _next_token_row(results, "packed", "block")
    if not (single and block):
        return []
    base = results["baseline"]
    s, b = single["models"][base], block["models"][base]
    gap = b["mean_nll"] - s["mean_nll"]
    share = b["truncated_context_tokens"] / max(1, b["n_tokens"])
    text = (f"On the same documents, {base}'s single-document and packed-block next-token losses differ by "
            f"{gap:+.4f} nats ({share:.1%} of packed tokens lost context at a row edge).")
    if seed and abs(gap) < 0.1:
        single_loss, batch_loss = SEED_FIGURES.single_document_loss, SEED_FIGURES.batch_loss
        text += (f" Packing with a block mask barely moves the loss, so it cannot explain the seed's "
                 f"{batch_loss - single_loss:.2f}-nat gap between its single-document ({single_loss:.3f}) and "
                 f"batch ({batch_loss:.3f}) rows: those rows scored different text.")
    return [text]


def _domains(results: Results, main: ConfigurationRow) -> list[str]:
    """The domains with the largest and smallest difference; none with one domain, "the same" when all print alike."""
    out = []
    for name, cmp in main["comparisons"].items():
        doms = [(d, c["diff"]) for d, c in cmp["per_domain"].items() if c["n_documents"] > 0]
        label = f"By domain ({name} - {results['baseline']})"
        if len(doms) > 1 and all_shown_equal([d for _, d in doms]):
            out.append(f"{label}: the same difference on all {len(doms)} domains ({doms[0][1]:+.4f} {unit(results)}).")
        elif len(doms) > 1:
            hi, lo = max(doms, key=lambda x: x[1]), min(doms, key=lambda x: x[1])
            out.append(f"{label}: largest difference on {hi[0]} ({hi[1]:+.4f} {unit(results)}), smallest on {lo[0]} "
                       f"({lo[1]:+.4f} {unit(results)}).")
    return out


def _diagnostics(results: Results) -> list[str]:
    levels = [d["level"] for d in results["diagnostics"]]
    if "error" in levels or "warning" in levels:
        return [f"Diagnostics: {levels.count('error')} errors and {levels.count('warning')} warnings; "
                "see the Diagnostics section before trusting a row."]
    return []
