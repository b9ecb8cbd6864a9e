"""The tables of "Where the difference comes from", built from results.json's `explanation` as cells and CSV records."""

from __future__ import annotations

from .render import Cell, Interval, NumberFormat, Table, Text, count, loss, share, signed
from .tables import ONE_DOCUMENT, bootstrap_interval

DIMENSIONS = {  # results key -> what the buckets are
    "domain": "Domain",
    "position": "Position of the target in its document",
    "context": "Context: tokens of its document the target was predicted from (its position, less what a row edge "
               "cut)",
    "text_class": "Text class of the target token",
    "frequency": "Frequency of the target in the scored corpus (count per type; rarest first)",
    "confidence": "The baseline's probability of the target",
    "agreement": "Top-1 predictions of the two models",
}
prob = NumberFormat(".4f")
small = NumberFormat(".3g")
percent = NumberFormat(".2f", 100, "%")


def _pm(stats: dict, fmt: NumberFormat = small) -> Text:
    """mean ± standard error, llama.cpp's way of printing a mean."""
    mean, se = stats.get("mean"), stats.get("se")
    if mean is None or se is None:
        return Text("n/a")
    return Text(f"{fmt.text(mean)} ± {fmt.text(se)}")


def _interval(stats: dict, fmt: NumberFormat, one_document: bool) -> Interval:
    if one_document:
        return Interval(None, None, fmt, absent=ONE_DOCUMENT)
    return Interval(stats.get("ci_low"), stats.get("ci_high"), fmt)


def distribution_table(name: str, entry: dict, base: str) -> Table:
    """llama.cpp's statistics, overall and per domain, with document-bootstrap intervals."""
    headers = ["Where", "Tokens", f"Mean KL({base}||{name})", "95% CI", "Median KL", "99% KL", "Max KL",
               f"Mean KL({name}||{base})", "Mean Δp", "RMS Δp", "Same top-1", "95% CI", "log-prob correlation"]
    rows: list[list[Cell] | str] = []
    records = []
    dist = entry["distribution"]
    for where, d in [("all", dist["overall"]), *sorted((dist.get("per_domain") or {}).items())]:
        kl, dp, top = d["kl_bo"], d["delta_p"], d["same_top"]
        one = d.get("n_documents") == 1  # a bootstrap over one document has no spread to show
        rows.append([Text(where), count(d["n_tokens"]), _pm(kl), _interval(kl, small, one),
                     small(kl.get("median")), small(kl.get("p99")), small(kl.get("max")), _pm(d["kl_ob"]),
                     _pm(dp, percent), percent(dp.get("rms")),
                     Text(f"{percent.text(top['share'])} ± {percent.text(top['se'])}" if top.get("se") is not None
                          else "n/a"), _interval(top, percent, one),
                     prob(d.get("logprob_correlation"))])
        records.append({"model": name, "where": where, "n_tokens": d["n_tokens"],
                        **{f"kl_bo_{k}": v for k, v in kl.items()}, **{f"kl_ob_{k}": v for k, v in d["kl_ob"].items()},
                        **{f"delta_p_{k}": v for k, v in dp.items()}, **{f"same_top_{k}": v for k, v in top.items()},
                        "logprob_correlation": d.get("logprob_correlation")})
    return Table(headers, rows, records, "distribution.csv",
                 title=f"{name} against {base}: how the two predicted distributions differ")


def contribution_table(name: str, dimension: str, result: dict, unit: str = "nats/token") -> Table:
    """One dimension's buckets: their contributions sum to D (the last row)."""
    headers = ["Bucket", "Tokens", "Share of tokens", "Mean Δ", f"Contribution ({unit})", "95% CI", "Share of D"]
    rows: list[list[Cell] | str] = []
    records = []
    types = any("top_types" in b for b in result["buckets"])
    if types:
        headers.append("Top types (share of the bucket's Δ)")
    for b in result["buckets"]:
        row = [Text(str(b["bucket"])), count(b["n_tokens"]), share(b["share_tokens"]), signed(b["mean_delta"]),
               signed(b["contribution"]), bootstrap_interval(b, b.get("ci_low"), b.get("ci_high")),
               share(b.get("share_of_diff"))]
        rows.append(row + ([Text(_top_types(b))] if types else []))
        records.append({"model": name, "dimension": dimension, **b} | ({"top_types": _top_types(b)} if types else {}))
    rows.append([Text("all (D)"), count(result["n_tokens"]), share(1.0), signed(result["diff"]),
                 signed(result["diff"]), bootstrap_interval(result, result.get("ci_low"), result.get("ci_high")),
                 share(1.0)] + ([Text("")] if types else []))
    return Table(headers, rows, records, "contributions.csv", title=f"{name}: {DIMENSIONS.get(dimension, dimension)}")


def _top_types(bucket: dict) -> str:
    """A bucket's types that carry most of its Δ, e.g. "9 types: 'Answer' 40%, 'Question' 34%"."""
    top = bucket.get("top_types") or []
    named = ", ".join(f"{t.get('text', t['token_id'])!r}" + (f" {share.text(t['share_of_bucket'])}"
                                                            if t.get("share_of_bucket") is not None else "")
                      for t in top)
    return f"{bucket.get('n_types', len(top))} types: {named}" if top else ""


def byte_class_table(name: str, result: dict) -> Table:
    """Bits per byte by byte class, for models with different tokenizers."""
    headers = ["Byte class", "Bytes", "Base bits/byte", "Other bits/byte", "Contribution (bits/byte)", "95% CI",
               "Share of D"]
    rows: list[list[Cell] | str] = []
    records = []
    for c in result["classes"]:
        rows.append([Text(c["bucket"]), count(c.get("bytes_base")), loss(c.get("bpb_base")), loss(c.get("bpb_other")),
                     signed(c["contribution"]), bootstrap_interval(result, c.get("ci_low"), c.get("ci_high")),
                     share(c.get("share_of_diff"))])
        records.append({"model": name, **c})
    rows.append([Text("all (D)"), count(result["n_bytes"]), loss(result["base"]), loss(result["other"]),
                 signed(result["diff"]), bootstrap_interval(result, result.get("ci_low"), result.get("ci_high")),
                 share(1.0)])
    return Table(headers, rows, records, "byte_classes.csv", title=f"{name}: bits per byte by byte class")


def calibration_table(name: str, entry: dict, base: str) -> Table:
    headers = ["Model", "Mean NLL", "Mean entropy", "Top-1 accuracy", "Mean top-1 probability", "ECE",
               "Confident (p > 0.9) and wrong: share of tokens", "their contribution to D", "share of D"]
    rows: list[list[Cell] | str] = []
    records = []
    cal = entry["calibration"]
    for role, model in (("base", base), ("other", name)):
        c, wrong = cal[role], cal[f"{role}_confident_wrong"]
        rows.append([Text(model), loss(c["mean_nll"]), loss(c["mean_entropy"]), share(c["accuracy"]),
                     share(c["mean_confidence"]), prob(c["ece"]), share(wrong["share_tokens"]),
                     signed(wrong["contribution"]), share(wrong["share_of_diff"])])
        records.append({"model": model, **{k: v for k, v in c.items() if k != "bins"},
                        **{f"confident_wrong_{k}": v for k, v in wrong.items()}})
    return Table(headers, rows, records, "calibration.csv",
                 title=f"{name} against {base}: calibration and confident mistakes")


def chat_text(name: str, turn: str | None, chat: dict) -> str:
    """What the chat-formatted run is, and what the final target of a whole document is in each run."""
    text = (f"Chat format: {name} scored again with each document as its reply to the user turn {turn!r} in its own "
            "chat template")
    final = chat.get("final_targets") or {}
    raw, formatted = (final.get(k) or {} for k in ("raw", "chat"))
    if not final.get("end_of_turn") or raw.get("id") == formatted.get("id"):
        ends = f", and each whole document ends with {raw['text']} in both runs" if raw.get("text") else ""
        said = (f" (--chat-end-of-turn: the template ends a reply with {formatted.get('text')}, the EOS itself)"
                if final.get("end_of_turn") else "")
        return text + f"; the same tokens are targets{ends}{said}."
    text += (f"; the targets are the raw run's but for each whole document's final target: {raw.get('text')} in the "
             f"raw run, {formatted.get('text')} (its template's end-of-turn token, --chat-end-of-turn) in the "
             f"chat-formatted run, {final['n_differ']:,} of {final['n_tokens']:,} targets.")
    if not final["n_differ"]:
        return text + " No document was scored whole, so every target is the same."
    return text + (f" The change is given over the {final['n_shared']:,} tokens both runs share, everything else "
                   "equal, and apart over all tokens (each run with its own final target) and over the final targets "
                   "alone.")


def chat_table(name: str, chat: dict, base: str) -> Table:
    """D of the raw and the chat-formatted run over the tokens both share, and the change the format makes, with
    what it does to the raw D in words (worded in results.json by the analysis, from the same numbers); under
    --chat-end-of-turn, the same over all tokens and over the final targets, which differ between the runs."""
    headers = ["Run", f"D against {base}", "95% CI", "Tokens", "What the format does"]
    dims = chat["attribution"]["dimensions"]
    any_dim = next(iter(dims.values()))
    final = chat.get("final_targets") or {}
    rows: list[list[Cell] | str] = []
    records: list[dict] = []
    blocks = [("shared", "", chat | {"n_tokens": any_dim["n_tokens"]},
               bootstrap_interval(any_dim, any_dim.get("ci_low"), any_dim.get("ci_high")))]
    if final.get("n_differ"):
        raw, formatted = final["raw"]["text"], final["chat"]["text"]
        rows.append(f"over the {final['n_shared']:,} tokens both runs share (all but the final targets)")
        blocks += [("all", f"over all {final['n_tokens']:,} tokens, each run with its own final target",
                    final["all_tokens"], Text("")),
                   ("final", f"the {final['n_differ']:,} final targets alone: {raw} in the raw run, {formatted} in "
                             "the chat-formatted run", final["final"], Text(""))]
    for tokens, title, figures, chat_ci in blocks:
        if title:
            rows.append(title)
        rows.extend(_chat_rows(name, figures, chat_ci, any_dim if tokens == "shared" else figures))
        low, high = figures["reduction_ci"]
        records.append({"model": name, "tokens": tokens, "n_tokens": figures["n_tokens"],
                        "raw_diff": figures["raw_diff"], "chat_diff": figures["chat_diff"],
                        "change": -figures["reduction"], "change_ci_low": None if high is None else -high,
                        "change_ci_high": None if low is None else -low, "effect": figures.get("effect")})
    return Table(headers, rows, records, "chat_format.csv", title=f"{name}: raw text against chat-formatted")


def _chat_rows(name: str, figures: dict, chat_ci: Cell, stats: dict) -> list[list[Cell]]:
    """The raw run's D, the chat-formatted run's, and the change (chat - raw) with its interval and its words."""
    n = count(figures["n_tokens"])
    low, high = figures["reduction_ci"]
    return [[Text(f"{name}, raw"), signed(figures["raw_diff"]), Text(""), n, Text("")],
            [Text(f"{name}, chat-formatted"), signed(figures["chat_diff"]), chat_ci, n, Text("")],
            [Text("change (chat - raw)"), signed(-figures["reduction"]),
             bootstrap_interval(stats, None if high is None else -high, None if low is None else -low), n,
             Text(figures.get("effect") or "")]]


def chat_domain_table(name: str, chat: dict) -> Table:
    """The chat format's effect per domain: D of the raw and the chat-formatted run over the domain's tokens (those
    both runs share) and the change the format makes there, with a document-bootstrap interval."""
    headers = ["Domain", "Tokens", "D raw", "D chat-formatted", "Change (chat - raw)", "95% CI"]
    rows: list[list[Cell] | str] = []
    records = []
    for domain, d in sorted(chat["per_domain"].items()):
        low, high = d["reduction_ci"]
        ci = {"ci_low": None if high is None else -high, "ci_high": None if low is None else -low}
        rows.append([Text(domain), count(d["n_tokens"]), signed(d["raw_diff"]), signed(d["chat_diff"]),
                     signed(-d["reduction"]), _interval(ci, signed, d.get("n_documents") == 1)])
        records.append({"model": name, "domain": domain, **{k: v for k, v in d.items() if k != "reduction_ci"},
                        "reduction_ci_low": low, "reduction_ci_high": high, "change": -d["reduction"],
                        "change_ci_low": ci["ci_low"], "change_ci_high": ci["ci_high"]})
    n_tokens = next(iter(chat["attribution"]["dimensions"].values()))["n_tokens"]
    low, high = chat["reduction_ci"]
    rows.append([Text("all"), count(n_tokens), signed(chat["raw_diff"]), signed(chat["chat_diff"]),
                 signed(-chat["reduction"]), Interval(None if high is None else -high, None if low is None else -low,
                                                      signed)])
    final = chat.get("final_targets") or {}
    over = f" (over the {final['n_shared']:,} tokens both runs share)" if final.get("n_differ") else ""
    return Table(headers, rows, records, "chat_format_per_domain.csv",
                 title=f"{name}: the chat format's effect per domain{over}")


def top_tokens_table(name: str, top: dict, direction: str, limit: int = 12) -> Table:
    headers = ["Token", "Count", "Mean Δ", "Total contribution", "Base mean NLL", "Other mean NLL"]
    rows: list[list[Cell] | str] = []
    records = []
    for t in top[direction][:limit]:
        rows.append([Text(repr(t.get("text", t["token_id"]))), count(t["count"]), signed(t["mean_delta"]),
                     signed(t["contribution"]), loss(t["mean_nll_base"]), loss(t["mean_nll_other"])])
        records.append({"model": name, "direction": direction, **t})
    label = "worse" if direction == "other_worse" else "better"
    return Table(headers, rows, records, "top_tokens.csv", title=f"Target tokens where {name} is {label}")


def top_spans_table(name: str, spans: dict, direction: str, limit: int = 8) -> Table:
    headers = ["Document", "Positions", "Summed Δ", "Base NLL", "Other NLL", "Text"]
    rows: list[list[Cell] | str] = []
    records = []
    for s in spans[direction][:limit]:
        text = s.get("text", "")
        rows.append([count(s["doc_id"]), Text(f"{s['first_pos']}-{s['last_pos']}"), signed(s["delta_sum"]),
                     loss(s["nll_sum_base"]), loss(s["nll_sum_other"]),
                     Text(text if len(text) <= 160 else text[:157] + "...")])
        records.append({"model": name, "direction": direction, **s})
    label = "worse" if direction == "other_worse" else "better"
    return Table(headers, rows, records, "top_spans.csv", title=f"Spans (up to 64 tokens) where {name} is {label}")


def top_documents_table(name: str, docs: dict, direction: str, limit: int = 8) -> Table:
    headers = ["Document", "Domain", "Tokens", "Summed Δ", "Mean Δ", "Base mean NLL", "Other mean NLL"]
    rows: list[list[Cell] | str] = []
    records = []
    for d in docs[direction][:limit]:
        rows.append([count(d["doc_id"]), Text(str(d.get("domain", ""))), count(d["n_tokens"]), signed(d["delta_sum"]),
                     signed(d["mean_delta"]), loss(d["mean_nll_base"]), loss(d["mean_nll_other"])])
        records.append({"model": name, "direction": direction, **d})
    label = "worse" if direction == "other_worse" else "better"
    return Table(headers, rows, records, "top_documents.csv", title=f"Documents where {name} is {label}")
