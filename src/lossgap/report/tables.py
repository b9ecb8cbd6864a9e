"""The report's tables, each built from results.json as cells (values with their formats) and CSV records."""

from __future__ import annotations

from ..formats import columns
from ..formats.schema import (
    ALL_POSITIONS,
    ComparisonStats,
    Results,
    bucket_order,
    finite,
    main_row,
    others,
    tokens_mode,
)
from .render import (
    NA,
    Cell,
    Interval,
    NumberFormat,
    Position,
    Table,
    Text,
    change,
    count,
    loss,
    plain,
    pvalue,
    share,
    signed,
)

ONE_DOCUMENT = "n/a (1 document)"  # a bootstrap over one document has no spread to show


def _flat(stats: dict) -> dict:
    """A comparison dict as CSV columns; the perplexity interval becomes two columns."""
    out = {}
    for k, v in stats.items():
        if isinstance(v, list):
            out[f"{k}_low"], out[f"{k}_high"] = (v + [None, None])[:2]
        else:
            out[k] = v
    return out


def bootstrap_interval(stats: ComparisonStats, low, high, fmt: NumberFormat = signed) -> Interval:
    """The 95% interval of a paired bootstrap over documents: with one document every resample is the same."""
    if stats.get("n_documents") == 1:
        return Interval(None, None, fmt, absent=ONE_DOCUMENT)
    return Interval(low, high, fmt)


def seed_table(results: Results) -> Table:
    """The seed's six-row layout, with what each row computes, exp(diff) - 1 and near-uniform flags added."""
    base, compared, tokens = results["baseline"], others(results), tokens_mode(results)
    metric, what = ("mean_nll", "Loss") if tokens else ("bits_per_byte", "bits/byte")
    names = [base, *compared]
    labels = ["Base", "Instruct", *compared[1:]] if compared else [base]  # one model alone: name it
    headers = ["Test Setup", "Attention Mask", *(f"{lab} {what}" for lab in labels)]
    headers += ["Difference" if i == 0 else f"Difference ({n})" for i, n in enumerate(compared)]
    if tokens:
        headers += ["Relative perplexity" if i == 0 else f"Relative perplexity ({n})" for i, n in enumerate(compared)]
    headers += ["What it computes", "Flag"]
    first_diff = 2 + len(names)
    rows: list[list[Cell] | str] = []
    records = []
    group = None
    for conf in results["configurations"]:
        if conf.get("seed_group") and conf["seed_group"] != group:
            group = conf["seed_group"]
            rows.append(group)
        setup = conf.get("seed_setup") or ("Single document" if conf["layout"] == "single" else "Batch")
        mask = conf.get("seed_mask") or {"block": "Proper 4D block", "causal": "Default causal"}.get(
            conf["mask"], conf["mask"])
        stats = [conf["models"].get(n, {}) for n in names]
        overall = [conf["comparisons"].get(n, {}).get("overall", {}) for n in compared]
        flagged = [n for n, s in zip(names, stats, strict=True) if s.get("near_uniform")]
        flag = f"near-uniform ({', '.join(flagged)})" if flagged else ""
        row = [Text(setup), Text(mask), *(loss(s.get(metric)) for s in stats)]
        row += [signed(o.get("diff")) for o in overall]
        if tokens:
            row += [change(o.get("relative_perplexity_change")) for o in overall]
        rows.append([*row, Text(conf.get("computes", "")), Text(flag)])
        rec = {"group": conf.get("seed_group", ""), "test_setup": setup, "attention_mask": mask,
               "configuration": conf["key"], "label_offset": conf["label_offset"], "layout": conf["layout"],
               "mask": conf["mask"]}
        rec |= {f"{n}_{metric}": s.get(metric) for n, s in zip(names, stats, strict=True)}
        rec |= {f"{n}_diff": o.get("diff") for n, o in zip(compared, overall, strict=True)}
        if tokens:
            rec |= {f"{n}_relative_perplexity_change": o.get("relative_perplexity_change")
                    for n, o in zip(compared, overall, strict=True)}
        rec |= {f"{n}_near_uniform": s.get("near_uniform") for n, s in zip(names, stats, strict=True)}
        rec["computes"] = conf.get("computes", "")
        records.append(rec)
    strong = frozenset(range(first_diff, first_diff + len(compared)))
    return Table(headers, rows, records, "seed_table.csv", strong=strong)


def statistics_table(results: Results) -> Table:
    tokens = tokens_mode(results)
    weighting = "token-weighted" if tokens else "byte-weighted"
    headers = ["Configuration", "Model", f"Difference ({weighting})", "95% CI"]
    if tokens:
        headers += ["Relative perplexity", "Rel. perplexity 95% CI"]
    headers += ["Difference (document-weighted)", "Docs worse", "Wilcoxon p", "Docs",
                "Tokens" if tokens else f"Tokens ({results['baseline']})"]
    rows: list[list[Cell] | str] = []
    records = []
    for conf in results["configurations"]:
        for name, cmp in conf["comparisons"].items():
            o = cmp.get("overall", {})
            row = [Text(conf["key"]), Text(name), signed(o.get("diff")),
                   bootstrap_interval(o, o.get("ci_low"), o.get("ci_high"))]
            if tokens:
                ci = o.get("ci_relative_perplexity_change") or [None, None]
                row += [change(o.get("relative_perplexity_change")), bootstrap_interval(o, ci[0], ci[1], change)]
            row += [signed(o.get("doc_weighted_diff")), share(o.get("share_docs_worse")),
                    pvalue(o.get("wilcoxon_p")), count(o.get("n_documents")), count(o.get("n_tokens"))]
            rows.append(row)
            records.append({"configuration": conf["key"], "model": name, "baseline": results["baseline"], **_flat(o)})
    return Table(headers, rows, records, "statistics.csv")


def per_domain_table(results: Results) -> Table:
    tokens = tokens_mode(results)
    headers = ["Model", "Domain", "Difference", "95% CI"] + (["Relative perplexity"] if tokens else [])
    headers += ["Docs", "Tokens"]
    rows: list[list[Cell] | str] = []
    records = []
    for name, cmp in (main_row(results) or {}).get("comparisons", {}).items():
        for domain, d in cmp.get("per_domain", {}).items():
            row = [Text(name), Text(domain), signed(d.get("diff")),
                   bootstrap_interval(d, d.get("ci_low"), d.get("ci_high"))]
            if tokens:
                row.append(change(d.get("relative_perplexity_change")))
            rows.append([*row, count(d.get("n_documents")), count(d.get("n_tokens"))])
            records.append({"configuration": results["main_configuration"], "model": name, "domain": domain,
                            **_flat(d)})
    return Table(headers, rows, records, "per_domain.csv")


def _bucket(label: str) -> Text:
    """A position bucket aligns as the numbers it stands for; the all-positions row is a label."""
    return Text(label) if label == ALL_POSITIONS else Position(label)


def leakage_tables(results: Results) -> list[Table]:
    headers = ["Position", "Tokens", "Share of tokens", "Mean block NLL", "Mean causal NLL",
               "Mean diff (causal - block)", "Mean |diff|", "Share of total |diff|"]
    tables = []
    for leak in results.get("leakage") or []:
        for name, buckets in leak["models"].items():
            rows: list[list[Cell] | str] = []
            records = []
            for b in buckets:
                rows.append([_bucket(b["bucket"]), count(b.get("n_tokens")), share(b.get("share_tokens")),
                             loss(b.get("mean_block")), loss(b.get("mean_causal")), signed(b.get("mean_diff")),
                             loss(b.get("mean_abs_diff")), share(b.get("share_of_abs_diff"))])
                records.append({"block": leak["block"], "causal": leak["causal"],
                                "label_offset": leak["label_offset"], "model": name, **b})
            target = "next token" if leak["label_offset"] == 1 else f"token t+{leak['label_offset']}"
            title = f"{name}: {leak['causal']} - {leak['block']} ({target})"
            tables.append(Table(headers, rows, records, "leakage.csv", title=title))
    return tables


def position_table(results: Results) -> Table:
    """Mean NLL by target position, one column per model (and differences when the tokens are shared)."""
    profile = results.get("position_profile") or {}
    models = profile.get("models") or {}
    by_model = {n: {b["bucket"]: b for b in rows} for n, rows in models.items()}
    buckets = bucket_order(models.values())
    base, compared = results["baseline"], [n for n in models if n != results["baseline"]]
    same_tokens = len({tuple((b["bucket"], b["n_tokens"]) for b in rows) for rows in models.values()}) <= 1
    diffs = tokens_mode(results) and base in by_model and same_tokens
    headers = ["Position"] + (["Tokens"] if same_tokens else [f"Tokens ({n})" for n in models])
    headers += [f"{n} mean NLL" for n in models] + ([f"{n} - {base}" for n in compared] if diffs else [])
    rows: list[list[Cell] | str] = []
    for bucket in buckets:
        cells = [by_model[n].get(bucket, {}) for n in models]
        row = [_bucket(bucket)] + ([count(cells[0].get("n_tokens"))] if same_tokens else
                                   [count(c.get("n_tokens")) for c in cells])
        row += [loss(c.get("mean_nll")) for c in cells]
        if diffs:
            b = finite(by_model[base].get(bucket, {}).get("mean_nll"))
            for n in compared:
                o = finite(by_model[n].get(bucket, {}).get("mean_nll"))
                row.append(signed(None if b is None or o is None else o - b))
        rows.append(row)
    records = [{"configuration": profile.get("configuration"), "model": n, **b}
               for n, rows_ in models.items() for b in rows_]
    return Table(headers, rows, records, "position_profile.csv")


def mean_columns(results: Results) -> list[columns.Column]:
    """The per-token columns declared with summary MEAN (columns.py) whose means the results hold."""
    summaries = [s for row in results["configurations"] for s in row["models"].values()]
    return [c for c in columns.TOKEN_COLUMNS
            if c.summary == columns.MEAN and any(c.summary_key in s for s in summaries)]


def token_statistics_table(results: Results) -> Table:
    """Each mean column's mean per scored token, per configuration and model."""
    present = mean_columns(results)
    headers = ["Configuration", "Model"] + [f"Mean {c.name}" + (f" ({c.unit})" if c.unit else "") for c in present]
    rows: list[list[Cell] | str] = []
    records = []
    for conf in results["configurations"]:
        for name, s in conf["models"].items():
            rows.append([Text(conf["key"]), Text(name), *(loss(s.get(c.summary_key)) for c in present)])
            records.append({"configuration": conf["key"], "model": name,
                            **{c.summary_key: s.get(c.summary_key) for c in present}})
    return Table(headers, rows, records, "token_statistics.csv")


def tokenizer_table(results: Results) -> Table:
    headers = ["Model", "Token-level comparison", "Verdict", "Differences", "Docs checked",
               "Docs tokenized differently", "Added tokens seen in corpus"]
    rows: list[list[Cell] | str] = []
    records = []
    for name, t in (results.get("tokenizers") or {}).items():
        rows.append([Text(name), Text("valid" if t.get("compatible") else "not valid"), Text(t.get("verdict", "")),
                     Text("; ".join(t.get("differences") or []) or "none"), count(t.get("documents_checked")),
                     count(t.get("documents_tokenized_differently")),
                     Text(", ".join(t.get("added_tokens_seen_in_corpus") or []) or "none")])
        records.append({"model": name, "baseline": results["baseline"], "compatible": t.get("compatible"),
                        "verdict": t.get("verdict"), "differences": "; ".join(t.get("differences") or []),
                        "documents_checked": t.get("documents_checked"),
                        "documents_tokenized_differently": t.get("documents_tokenized_differently"),
                        "added_tokens_seen_in_corpus": " ".join(t.get("added_tokens_seen_in_corpus") or [])})
    return Table(headers, rows, records, "tokenizers.csv")


def diagnostics_table(results: Results) -> Table:
    fields = ("level", "code", "where", "message")
    diags = results.get("diagnostics") or []
    rows: list[list[Cell] | str] = [[Text(d.get(k, "")) for k in fields] for d in diags]
    records = [{k: d.get(k) for k in fields} for d in diags]
    return Table(["Level", "Code", "Where", "Message"], rows, records, "diagnostics.csv")


def models_table(results: Results) -> Table:
    headers = ["Model", "Role", "Spec", "Type", "Parameters", "Vocabulary", "dtype", "Device", "Attention"]
    rows: list[list[Cell] | str] = []
    for name, m in results["models"].items():
        rows.append([Text(name), Text("baseline" if name == results["baseline"] else "compared"),
                     Text(str(m.get("spec", ""))), Text(str(m.get("model_type", ""))), count(m.get("n_params")),
                     count(m.get("vocab_size")), Text(str(m.get("dtype", ""))), Text(str(m.get("device", ""))),
                     Text(str(m.get("attn_implementation", "")))])
    return Table(headers, rows, [])


def _setting(value) -> Cell:
    """A setting as the number or the words it is."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return plain(value)
    return Text(str(value))


def settings_table(results: Results) -> Table:
    s = results.get("settings") or {}
    corpus = s.get("corpus") or {}
    versions = s.get("versions") or {}
    mode = "token-level (nats/token)" if tokens_mode(results) else "bits per byte (tokenizers differ)"
    pairs: list[tuple[str, Cell]] = [
        ("Mode", Text(mode)), ("Baseline", Text(results["baseline"])),
        ("Main configuration", Text(results["main_configuration"])), ("Bootstrap resamples", count(s.get("bootstrap"))),
        ("Seed", plain(s.get("seed"))), ("Corpus", Text(str(corpus.get("path", NA)))),
        ("Sequence length", count(s.get("seq_len")))]
    pairs += [(f"Corpus {k.replace('_', ' ')}", _setting(v))
              for k, v in corpus.items() if k != "path" and v is not None]
    pairs += [("Versions", Text(", ".join(f"{k} {v}" for k, v in versions.items()) or NA)),
              ("Schema version", plain(results.get("schema_version")))]
    return Table(["Setting", "Value"], [[Text(name), value] for name, value in pairs], [])
