"""report.md, report.html, one CSV per table and the plots: a pure function of results.json.

The sections are built once (tables.py makes their tables, figures.py lists their figures) and rendered to Markdown,
HTML and CSV by render.py, so the renderings cannot disagree. Nothing here reads the per-token files: `lossgap
report DIR` and `lossgap compare` write byte-identical reports from the same results.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..formats.files import write_text
from ..formats.paths import ComparisonFolder
from ..formats.schema import Results, clean, number, others, tokens_mode, unit
from .explanation import explanation_section
from .figures import DOMAINS, LAYERS, LEAKAGE, POSITIONS, STATISTICS, drawn, write_figures
from .layers import layers_section
from .render import NA, Section, count, md_table, render_html, render_markdown, write_csvs
from .tables import (
    diagnostics_table,
    leakage_tables,
    mean_columns,
    models_table,
    per_domain_table,
    position_table,
    seed_table,
    settings_table,
    statistics_table,
    token_statistics_table,
    tokenizer_table,
)


def format_seed_table(results: Results) -> str:
    """The seed table as Markdown, for the terminal."""
    return md_table(seed_table(clean(results)))


def sections(results: Results, figures: dict[str, Path | None]) -> list[Section]:
    """The report's content, shared by the Markdown and HTML renderings; `figures` maps each PNG name to its
    file, or None where the plot was skipped."""
    results = clean(results)
    secs = [
        Section("Findings", bullets=list(results.get("findings") or [])),
        _seed_section(results),
        _statistics_section(results, drawn(STATISTICS, figures)),
        Section("By domain", [f"Configuration {results['main_configuration']}; differences in {unit(results)}."
                              + _overflow_note(results)],
                tables=[per_domain_table(results)], figures=drawn(DOMAINS, figures)),
        _leakage_section(results, drawn(LEAKAGE, figures)),
        Section("NLL by position", [
            "Mean NLL (nats/token) by target position within its document, configuration "
            f"{(results.get('position_profile') or {}).get('configuration', NA)}."],
            tables=[position_table(results)], figures=drawn(POSITIONS, figures)),
    ]
    if mean_columns(results):
        secs.append(_token_statistics_section(results))
    explanation = explanation_section(results, figures)
    if explanation is not None:
        secs.insert(2, explanation)  # right after the seed's table: where the headline difference comes from
        layer_section = layers_section(results, drawn(LAYERS, figures))
        if layer_section is not None:
            secs.insert(3, layer_section)
    return secs + [
        Section("Tokenizers", tables=[tokenizer_table(results)]),
        _diagnostics_section(results),
        Section("Settings", tables=[models_table(results), settings_table(results)]),
    ]


def _seed_section(results: Results) -> Section:
    base, compared = results["baseline"], others(results)
    roles = f"Base = {base}" + (f", Instruct = {compared[0]}" if compared else "")
    if not compared:
        text = (f"One model ({base}) under the seed's configurations: mean loss in nats/token over the same scored "
                "tokens in every row. \"near-uniform\" marks a mean loss close to ln(vocab): the targets are likely "
                "misaligned.")
    elif tokens_mode(results):
        text = (f"Mean loss in nats/token over the same scored tokens for every model ({roles}). Difference = "
                "Instruct - Base; Relative perplexity = exp(difference) - 1. \"near-uniform\" marks a mean loss close "
                "to ln(vocab): the targets are likely misaligned (above ln(vocab): worse than uniform, an untrained "
                "model).")
    else:
        text = (f"The tokenizers differ, so this table shows bits per byte instead of losses ({roles}); differences "
                "are in bits/byte and a relative perplexity per token is not defined.")
    return Section("The seed's table, recomputed", [text + _overflow_note(results)], tables=[seed_table(results)])


OVERFLOW = (" A relative perplexity of +inf% overflowed: exp(difference) exceeds the largest float (a difference above "
            "709.78 nats/token); the difference columns hold the finite numbers.")


def _overflow_note(results: Results) -> str:
    """OVERFLOW where a relative perplexity or its interval is infinite (schema.INF), else nothing."""
    for row in results["configurations"]:
        for cmp in row["comparisons"].values():
            for o in (cmp.get("overall", {}), *cmp.get("per_domain", {}).values()):
                values = [o.get("relative_perplexity_change"), *(o.get("ci_relative_perplexity_change") or [])]
                if any(number(v) == math.inf for v in values):
                    return OVERFLOW
    return ""


def _statistics_section(results: Results, figures: list[tuple[str, str]]) -> Section:
    weighting = "token" if tokens_mode(results) else "byte"
    resamples = count((results.get("settings") or {}).get("bootstrap")).display
    text = (f"Differences are {unit(results)}, other model minus {results['baseline']}, with 95% paired bootstrap "
            f"intervals over documents ({resamples} resamples). The {weighting}-weighted difference is the headline "
            "number; the document-weighted one gives every document equal weight. Docs worse: share of documents on "
            "which the other model's mean loss is higher. Wilcoxon: signed-rank test of the per-document "
            "differences." + _overflow_note(results))
    return Section("Statistics", [text], tables=[statistics_table(results)], figures=figures)


def _leakage_section(results: Results, figures: list[tuple[str, str]]) -> Section:
    tables = leakage_tables(results)
    if tables:
        text = ("The same tokens of one model scored with the block mask (documents apart) and the default causal "
                "mask (context crosses documents), by position of the target within its document. A corpus-wide "
                "mean hides that the change sits in the first tokens of each document.")
    else:
        text = "No block/causal pair of configurations was scored, so leakage was not measured."
    return Section("Leakage by position", [text], tables=tables, figures=figures)


def _token_statistics_section(results: Results) -> Section:
    meanings = "; ".join(f"{c.name}: {c.meaning}" + (f" ({c.unit})" if c.unit else "") for c in mean_columns(results))
    text = f"Mean per scored token of the per-token columns beyond the loss, per configuration and model. {meanings}."
    return Section("Per-token statistics", [text], tables=[token_statistics_table(results)])


def _diagnostics_section(results: Results) -> Section:
    levels = [d.get("level") for d in results.get("diagnostics") or []]
    text = f"{levels.count('error')} errors, {levels.count('warning')} warnings, {levels.count('info')} notes."
    return Section("Diagnostics", [text], tables=[diagnostics_table(results)])


def _title(results: Results) -> str:
    compared = others(results)
    if not compared:
        return f"lossgap report: {results['baseline']}"
    return f"lossgap report: {', '.join(compared)} vs {results['baseline']}"


def _subtitle(results: Results) -> str:
    corpus = ((results.get("settings") or {}).get("corpus") or {}).get("path", NA)
    if tokens_mode(results):
        return f"Corpus {corpus}. Token-level comparison: losses in nats/token."
    return (f"Corpus {corpus}. The tokenizers differ: models are compared in bits per byte, "
            "and the seed table shows bits per byte instead of losses.")


def write_report(out: Path, results: Results) -> list[Path]:
    """Write report.md, report.html, the CSVs and the plots into `out`; return the files written."""
    folder = ComparisonFolder(Path(out))
    folder.root.mkdir(parents=True, exist_ok=True)
    results = clean(results)
    figures = write_figures(folder.root, results)
    secs = sections(results, figures)
    title, subtitle = _title(results), _subtitle(results)
    md, page = folder.report_markdown, folder.report_html
    write_text(md, render_markdown(title, subtitle, secs))
    write_text(page, render_html(title, subtitle, secs, folder.root))
    return [md, page, *write_csvs(folder.root, secs), *(p for p in figures.values() if p is not None)]
