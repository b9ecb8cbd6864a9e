"""report.md, report.html, one CSV per table and the plots: a pure function of results.json.

Every table is built once as display strings (for Markdown and HTML) plus full-precision records (for its CSV),
so the three renderings cannot disagree. Nothing here reads the per-token files: `lossgap report DIR` and
`lossgap compare` write byte-identical reports from the same results.
"""

from __future__ import annotations

import base64
import csv
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import plots

NA = "n/a"


# ---------------------------------------------------------------- number formats (None, NaN and inf print as n/a)


def _value(x) -> float | None:
    if x is None or isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return x + 0  # -0.0 -> 0.0: an exact zero never prints with a minus sign


def _formatter(spec: str, scale: float = 1, suffix: str = "", doc: str = ""):
    """A number formatter that prints n/a for missing or non-finite values."""

    def fmt(x) -> str:
        v = _value(x)
        return NA if v is None else f"{scale * v:{spec}}{suffix}"

    fmt.__doc__ = doc
    return fmt


loss = _formatter(".4f", doc="A loss: 2.5140.")
signed = _formatter("+.4f", doc="A difference: +0.1440.")
change = _formatter("+.1f", 100, "%", doc="A relative change as a signed percentage: 0.1549 -> +15.5%.")
share = _formatter(".1f", 100, "%", doc="A share as a percentage: 0.25 -> 25.0%.")
count = _formatter(",.0f", doc="A count with thousands separators.")
pvalue = _formatter(".2g", doc="A p-value, two significant digits.")


def interval(lo, hi, fmt=signed) -> str:
    return NA if _value(lo) is None or _value(hi) is None else f"{fmt(lo)} to {fmt(hi)}"


# ---------------------------------------------------------------- the document model


@dataclass
class Table:
    """Display rows (a str row is a group heading across the table) and the CSV records behind them."""

    headers: list[str]
    rows: list[list[str] | str]
    records: list[dict]
    csv: str | None = None  # file name; tables sharing a name share the file
    title: str = ""
    strong: frozenset[int] = frozenset()  # columns shown in bold, like the seed's differences


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (png file name, alt text)


def _clean(obj):
    """JSON's view of the results (NaN/inf -> None, tuples -> lists), so in-memory and re-read results agree."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str):  # numpy scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _others(results: dict) -> list[str]:
    return [n for n in results["models"] if n != results["baseline"]]


def _tokens_mode(results: dict) -> bool:
    return results["mode"] == "tokens"


def _flat(stats: dict) -> dict:
    """A comparison dict as CSV columns; the perplexity interval becomes two columns."""
    out = {}
    for k, v in stats.items():
        if isinstance(v, list):
            out[f"{k}_low"], out[f"{k}_high"] = (v + [None, None])[:2]
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------- tables


def seed_table(results: dict) -> Table:
    """The seed's six-row layout, with what each row computes, exp(diff) - 1 and near-uniform flags added."""
    base, others, tokens = results["baseline"], _others(results), _tokens_mode(results)
    metric, what = ("mean_nll", "Loss") if tokens else ("bits_per_byte", "bits/byte")
    names = [base, *others]
    labels = ["Base", "Instruct", *others[1:]] if others else [base]  # one model alone: name it
    headers = ["Test Setup", "Attention Mask", *(f"{lab} {what}" for lab in labels)]
    headers += ["Difference" if i == 0 else f"Difference ({n})" for i, n in enumerate(others)]
    if tokens:
        headers += ["Relative perplexity" if i == 0 else f"Relative perplexity ({n})" for i, n in enumerate(others)]
    headers += ["What it computes", "Flag"]
    first_diff = 2 + len(names)
    rows: list[list[str] | str] = []
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
        overall = [conf["comparisons"].get(n, {}).get("overall", {}) for n in others]
        flagged = [n for n, s in zip(names, stats, strict=True) if s.get("near_uniform")]
        flag = f"near-uniform ({', '.join(flagged)})" if flagged else ""
        row = [setup, mask, *(loss(s.get(metric)) for s in stats), *(signed(o.get("diff")) for o in overall)]
        if tokens:
            row += [change(o.get("relative_perplexity_change")) for o in overall]
        rows.append([*row, conf.get("computes", ""), flag])
        rec = {"group": conf.get("seed_group", ""), "test_setup": setup, "attention_mask": mask,
               "configuration": conf["key"], "label_offset": conf["label_offset"], "layout": conf["layout"],
               "mask": conf["mask"]}
        rec |= {f"{n}_{metric}": s.get(metric) for n, s in zip(names, stats, strict=True)}
        rec |= {f"{n}_diff": o.get("diff") for n, o in zip(others, overall, strict=True)}
        if tokens:
            rec |= {f"{n}_relative_perplexity_change": o.get("relative_perplexity_change")
                    for n, o in zip(others, overall, strict=True)}
        rec |= {f"{n}_near_uniform": s.get("near_uniform") for n, s in zip(names, stats, strict=True)}
        rec["computes"] = conf.get("computes", "")
        records.append(rec)
    strong = frozenset(range(first_diff, first_diff + len(others)))
    return Table(headers, rows, records, "seed_table.csv", strong=strong)


def format_seed_table(results: dict) -> str:
    """The seed table as Markdown, for the terminal."""
    return _md_table(seed_table(_clean(results)))


def statistics_table(results: dict) -> Table:
    tokens = _tokens_mode(results)
    weighting = "token-weighted" if tokens else "byte-weighted"
    headers = ["Configuration", "Model", f"Difference ({weighting})", "95% CI"]
    if tokens:
        headers += ["Relative perplexity", "Rel. perplexity 95% CI"]
    headers += ["Difference (document-weighted)", "Docs worse", "Wilcoxon p", "Docs",
                "Tokens" if tokens else f"Tokens ({results['baseline']})"]
    rows: list[list[str] | str] = []
    records = []
    for conf in results["configurations"]:
        for name, cmp in conf["comparisons"].items():
            o = cmp.get("overall", {})
            row = [conf["key"], name, signed(o.get("diff")), interval(o.get("ci_low"), o.get("ci_high"))]
            if tokens:
                ci = o.get("ci_relative_perplexity_change") or [None, None]
                row += [change(o.get("relative_perplexity_change")), interval(ci[0], ci[1], change)]
            row += [signed(o.get("doc_weighted_diff")), share(o.get("share_docs_worse")),
                    pvalue(o.get("wilcoxon_p")), count(o.get("n_documents")), count(o.get("n_tokens"))]
            rows.append(row)
            records.append({"configuration": conf["key"], "model": name, "baseline": results["baseline"], **_flat(o)})
    return Table(headers, rows, records, "statistics.csv")


def per_domain_table(results: dict) -> Table:
    tokens = _tokens_mode(results)
    conf = next((c for c in results["configurations"] if c["key"] == results["main_configuration"]), None)
    headers = ["Model", "Domain", "Difference", "95% CI"] + (["Relative perplexity"] if tokens else [])
    headers += ["Docs", "Tokens"]
    rows: list[list[str] | str] = []
    records = []
    for name, cmp in (conf or {}).get("comparisons", {}).items():
        for domain, d in cmp.get("per_domain", {}).items():
            row = [name, domain, signed(d.get("diff")), interval(d.get("ci_low"), d.get("ci_high"))]
            if tokens:
                row.append(change(d.get("relative_perplexity_change")))
            rows.append([*row, count(d.get("n_documents")), count(d.get("n_tokens"))])
            records.append({"configuration": results["main_configuration"], "model": name, "domain": domain,
                            **_flat(d)})
    return Table(headers, rows, records, "per_domain.csv")


def leakage_tables(results: dict) -> list[Table]:
    headers = ["Position", "Tokens", "Share of tokens", "Mean block NLL", "Mean causal NLL",
               "Mean diff (causal - block)", "Mean |diff|", "Share of total |diff|"]
    tables = []
    for leak in results.get("leakage") or []:
        for name, buckets in leak["models"].items():
            rows: list[list[str] | str] = []
            records = []
            for b in buckets:
                rows.append([b["bucket"], count(b.get("n_tokens")), share(b.get("share_tokens")),
                             loss(b.get("mean_block")), loss(b.get("mean_causal")), signed(b.get("mean_diff")),
                             loss(b.get("mean_abs_diff")), share(b.get("share_of_abs_diff"))])
                records.append({"block": leak["block"], "causal": leak["causal"],
                                "label_offset": leak["label_offset"], "model": name, **b})
            target = "next token" if leak["label_offset"] == 1 else f"token t+{leak['label_offset']}"
            title = f"{name}: {leak['causal']} - {leak['block']} ({target})"
            tables.append(Table(headers, rows, records, "leakage.csv", title=title))
    return tables


def position_table(results: dict) -> Table:
    """Mean NLL by target position, one column per model (and differences when the tokens are shared)."""
    profile = results.get("position_profile") or {}
    models = profile.get("models") or {}
    by_model = {n: {b["bucket"]: b for b in rows} for n, rows in models.items()}
    buckets = plots.bucket_order(models.values())
    base, others = results["baseline"], [n for n in models if n != results["baseline"]]
    same_tokens = len({tuple((b["bucket"], b["n_tokens"]) for b in rows) for rows in models.values()}) <= 1
    diffs = _tokens_mode(results) and base in by_model and same_tokens
    headers = ["Position"] + (["Tokens"] if same_tokens else [f"Tokens ({n})" for n in models])
    headers += [f"{n} mean NLL" for n in models] + ([f"{n} - {base}" for n in others] if diffs else [])
    rows: list[list[str] | str] = []
    for bucket in buckets:
        cells = [by_model[n].get(bucket, {}) for n in models]
        row = [bucket] + ([count(cells[0].get("n_tokens"))] if same_tokens else
                          [count(c.get("n_tokens")) for c in cells])
        row += [loss(c.get("mean_nll")) for c in cells]
        if diffs:
            b = _value(by_model[base].get(bucket, {}).get("mean_nll"))
            for n in others:
                o = _value(by_model[n].get(bucket, {}).get("mean_nll"))
                row.append(signed(None if b is None or o is None else o - b))
        rows.append(row)
    records = [{"configuration": profile.get("configuration"), "model": n, **b}
               for n, rows_ in models.items() for b in rows_]
    return Table(headers, rows, records, "position_profile.csv")


def tokenizer_table(results: dict) -> Table:
    headers = ["Model", "Token-level comparison", "Verdict", "Differences", "Docs checked",
               "Docs tokenized differently", "Added tokens seen in corpus"]
    rows: list[list[str] | str] = []
    records = []
    for name, t in (results.get("tokenizers") or {}).items():
        rows.append([name, "valid" if t.get("compatible") else "not valid", t.get("verdict", ""),
                     "; ".join(t.get("differences") or []) or "none", count(t.get("documents_checked")),
                     count(t.get("documents_tokenized_differently")),
                     ", ".join(t.get("added_tokens_seen_in_corpus") or []) or "none"])
        records.append({"model": name, "baseline": results["baseline"], "compatible": t.get("compatible"),
                        "verdict": t.get("verdict"), "differences": "; ".join(t.get("differences") or []),
                        "documents_checked": t.get("documents_checked"),
                        "documents_tokenized_differently": t.get("documents_tokenized_differently"),
                        "added_tokens_seen_in_corpus": " ".join(t.get("added_tokens_seen_in_corpus") or [])})
    return Table(headers, rows, records, "tokenizers.csv")


def diagnostics_table(results: dict) -> Table:
    diags = results.get("diagnostics") or []
    rows: list[list[str] | str] = [[d.get("level", ""), d.get("code", ""), d.get("where", ""), d.get("message", "")]
                                   for d in diags]
    records = [{k: d.get(k) for k in ("level", "code", "where", "message")} for d in diags]
    return Table(["Level", "Code", "Where", "Message"], rows, records, "diagnostics.csv")


def models_table(results: dict) -> Table:
    headers = ["Model", "Role", "Spec", "Type", "Parameters", "Vocabulary", "dtype", "Device", "Attention"]
    rows: list[list[str] | str] = []
    for name, m in results["models"].items():
        rows.append([name, "baseline" if name == results["baseline"] else "compared", str(m.get("spec", "")),
                     str(m.get("model_type", "")), count(m.get("n_params")), count(m.get("vocab_size")),
                     str(m.get("dtype", "")), str(m.get("device", "")), str(m.get("attn_implementation", ""))])
    return Table(headers, rows, [])


def settings_table(results: dict) -> Table:
    s = results.get("settings") or {}
    corpus = s.get("corpus") or {}
    versions = s.get("versions") or {}
    pairs = [("Mode", "token-level (nats/token)" if _tokens_mode(results) else "bits per byte (tokenizers differ)"),
             ("Baseline", results["baseline"]), ("Main configuration", results["main_configuration"]),
             ("Bootstrap resamples", count(s.get("bootstrap"))), ("Seed", str(s.get("seed", NA))),
             ("Corpus", str(corpus.get("path", NA))), ("Sequence length", count(s.get("seq_len")))]
    pairs += [(f"Corpus {k.replace('_', ' ')}", str(v)) for k, v in corpus.items() if k != "path" and v is not None]
    pairs += [("Versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or NA),
              ("Schema version", str(results.get("schema_version", NA)))]
    return Table(["Setting", "Value"], [list(p) for p in pairs], [])


# ---------------------------------------------------------------- sections

FIGURES = {
    "per_domain_difference.png": "Difference in loss per domain (other model minus baseline) with 95% bootstrap "
                                 "intervals and a zero line",
    "nll_by_position.png": "Mean NLL by position of the target within its document, one line per model",
    "leakage_by_position.png": "Mean NLL under the causal mask minus the block mask by position, with the share "
                               "of tokens per position as bars",
    "doc_difference_histogram.png": "Histogram of per-document differences in mean loss",
}


def sections(results: dict, figures: dict[str, Path | None]) -> list[Section]:
    """The report's content, shared by the Markdown and HTML renderings."""
    results = _clean(results)
    tokens, base, others = _tokens_mode(results), results["baseline"], _others(results)
    unit = "nats/token" if tokens else "bits/byte"
    fig = lambda name: [(name, FIGURES[name])] if figures.get(name) else []  # noqa: E731

    seed = Section("The seed's table, recomputed", tables=[seed_table(results)])
    roles = f"Base = {base}" + (f", Instruct = {others[0]}" if others else "")
    if not others:
        seed.paragraphs.append(
            f"One model ({base}) under the seed's configurations: mean loss in nats/token over the same scored "
            "tokens in every row. \"near-uniform\" marks a mean loss close to ln(vocab): the targets are likely "
            "misaligned.")
    elif tokens:
        seed.paragraphs.append(
            f"Mean loss in nats/token over the same scored tokens for every model ({roles}). Difference = Instruct "
            "- Base; Relative perplexity = exp(difference) - 1. \"near-uniform\" marks a mean loss close to "
            "ln(vocab): the targets are likely misaligned (above ln(vocab): worse than uniform, an untrained model).")
    else:
        seed.paragraphs.append(
            f"The tokenizers differ, so this table shows bits per byte instead of losses ({roles}); differences "
            "are in bits/byte and a relative perplexity per token is not defined.")

    stats = Section("Statistics", tables=[statistics_table(results)],
                    figures=fig("doc_difference_histogram.png"))
    stats.paragraphs.append(
        f"Differences are {unit}, other model minus {base}, with 95% paired bootstrap intervals over documents "
        f"({count((results.get('settings') or {}).get('bootstrap'))} resamples). The "
        f"{'token' if tokens else 'byte'}-weighted difference is the headline number; the document-weighted one "
        "gives every document equal weight. Docs worse: share of "
        "documents on which the other model's mean loss is higher. Wilcoxon: signed-rank test of the per-document "
        "differences.")

    domain = Section("By domain", tables=[per_domain_table(results)], figures=fig("per_domain_difference.png"))
    domain.paragraphs.append(f"Configuration {results['main_configuration']}; differences in {unit}.")

    leak = Section("Leakage by position", tables=leakage_tables(results), figures=fig("leakage_by_position.png"))
    if leak.tables:
        leak.paragraphs.append(
            "The same tokens of one model scored with the block mask (documents apart) and the default causal mask "
            "(context crosses documents), by position of the target within its document. A corpus-wide mean hides "
            "that the change sits in the first tokens of each document.")
    else:
        leak.paragraphs.append("No block/causal pair of configurations was scored, so leakage was not measured.")

    position = Section("NLL by position", tables=[position_table(results)], figures=fig("nll_by_position.png"))
    position.paragraphs.append(
        f"Mean NLL (nats/token) by target position within its document, configuration "
        f"{(results.get('position_profile') or {}).get('configuration', NA)}.")

    diags = results.get("diagnostics") or []
    levels = [d.get("level") for d in diags]
    diag = Section("Diagnostics", tables=[diagnostics_table(results)])
    diag.paragraphs.append(f"{levels.count('error')} errors, {levels.count('warning')} warnings, "
                           f"{levels.count('info')} notes.")

    return [
        Section("Findings", bullets=list(results.get("findings") or [])),
        seed, stats, domain, leak, position,
        Section("Tokenizers", tables=[tokenizer_table(results)]),
        diag,
        Section("Settings", tables=[models_table(results), settings_table(results)]),
    ]


def _title(results: dict) -> str:
    others = _others(results)
    if not others:
        return f"lossgap report: {results['baseline']}"
    return f"lossgap report: {', '.join(others)} vs {results['baseline']}"


def _subtitle(results: dict) -> str:
    corpus = ((results.get("settings") or {}).get("corpus") or {}).get("path", NA)
    if _tokens_mode(results):
        return f"Corpus {corpus}. Token-level comparison: losses in nats/token."
    return (f"Corpus {corpus}. The tokenizers differ: models are compared in bits per byte, "
            "and the seed table shows bits per byte instead of losses.")


# ---------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in table.headers) + " |",
             "|" + "|".join("-" * (len(h) + 2) for h in table.headers) + "|"]
    for row in table.rows:
        if isinstance(row, str):
            lines.append(f"| **{_md_cell(row)}** |")
            continue
        cells = [f"**{_md_cell(c)}**" if i in table.strong and c != NA else _md_cell(c) for i, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(results: dict, secs: list[Section]) -> str:
    parts = [f"# {_title(results)}", _subtitle(results)]
    for s in secs:
        parts.append(f"## {s.title}")
        parts += s.paragraphs
        if s.bullets:
            parts.append("\n".join(f"- {b}" for b in s.bullets))
        for t in s.tables:
            if t.title:
                parts.append(f"### {t.title}")
            parts.append(_md_table(t) if t.rows else "_(no rows)_")
        parts += [f"![{alt}]({name})" for name, alt in s.figures]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- HTML

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; margin: 2em auto;
       max-width: 1250px; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.7em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0 1.2em; font-size: .88em; }
th, td { border: 1px solid #d0d7de; padding: .3em .6em; vertical-align: top; }
th { background: #f0f3f6; text-align: left; }
tr:nth-child(even) td { background: #f8f9fa; }
tr.group th { background: #e7ecf2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1em 0; } figcaption { color: #57606a; font-size: .9em; }
img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
nav a { margin-right: 1em; }
"""


def _is_number(text: str) -> bool:
    t = text.replace(",", "").replace("%", "").replace(" to ", "").replace("+", "").replace("-", "").replace(".", "")
    return t.isdigit() or text == NA


def _html_table(table: Table) -> str:
    e = html.escape
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in table.headers) + "</tr></thead>", "<tbody>"]
    for row in table.rows:
        if isinstance(row, str):
            out.append(f'<tr class="group"><th colspan="{len(table.headers)}">{e(row)}</th></tr>')
            continue
        cells = []
        for i, c in enumerate(row):
            text = f"<strong>{e(c)}</strong>" if i in table.strong and c != NA else e(c)
            cells.append(f'<td class="num">{text}</td>' if _is_number(c) else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _anchor(title: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in title.lower()).strip("-")


def render_html(results: dict, secs: list[Section], out: Path) -> str:
    e = html.escape
    body = [f"<h1>{e(_title(results))}</h1>", f"<p>{e(_subtitle(results))}</p>",
            "<nav>" + "".join(f'<a href="#{_anchor(s.title)}">{e(s.title)}</a>' for s in secs) + "</nav>"]
    for s in secs:
        body.append(f'<h2 id="{_anchor(s.title)}">{e(s.title)}</h2>')
        body += [f"<p>{e(p)}</p>" for p in s.paragraphs]
        if s.bullets:
            body.append("<ul>" + "".join(f"<li>{e(b)}</li>" for b in s.bullets) + "</ul>")
        for t in s.tables:
            if t.title:
                body.append(f"<h3>{e(t.title)}</h3>")
            body.append(_html_table(t) if t.rows else "<p><em>(no rows)</em></p>")
        for name, alt in s.figures:
            data = base64.b64encode((out / name).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(alt)}">'
                        f"<figcaption>{e(alt)} ({e(name)})</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{e(_title(results))}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


# ---------------------------------------------------------------- files


def _write_csvs(out: Path, secs: list[Section]) -> list[Path]:
    """One CSV per table name, full precision (floats as repr), None as an empty field."""
    grouped: dict[str, list[dict]] = {}
    for s in secs:
        for t in s.tables:
            if t.csv:
                grouped.setdefault(t.csv, []).extend(t.records)
    paths = []
    for name, records in grouped.items():
        fields = list(dict.fromkeys(k for r in records for k in r))
        path = out / name
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="", lineterminator="\n")
            writer.writeheader()
            writer.writerows(records)
        paths.append(path)
    return paths


def write_report(out: Path, results: dict) -> list[Path]:
    """Write report.md, report.html, the CSVs and the plots into `out`; return the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = _clean(results)
    figures = plots.write_plots(out, results)
    secs = sections(results, figures)
    md, page = out / "report.md", out / "report.html"
    md.write_text(render_markdown(results, secs), encoding="utf-8")
    page.write_text(render_html(results, secs, out), encoding="utf-8")
    return [md, page, *_write_csvs(out, secs), *(p for p in figures.values() if p is not None)]
