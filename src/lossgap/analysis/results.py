"""results.json: every number of a comparison, with diagnostics and findings in plain words.

Built only from compare.json and the per-run Parquet files, so `lossgap report DIR` reproduces it exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..formats.files import write_text
from ..formats.paths import ComparisonFolder
from ..formats.schema import (
    SCHEMA_VERSION,
    ConfigurationRow,
    Diagnostic,
    Histogram,
    LeakagePair,
    Manifest,
    PositionBucket,
    Results,
    clean,
)
from ..matrix import Configuration, leakage_pairs, main_configuration
from .bootstrap import comparison_seed
from .documents import RunDocuments, compare_docs, near_uniform
from .explanation import build_explanation
from .findings import key_findings
from .positions import leakage_by_position, position_profile
from .precision import pair_fp32_diagnostic, run_fp32_diagnostic
from .stats import histogram

TOKEN_KEYS = ("doc_id", "pos", "nll")  # what leakage and the position profile read of tokens.parquet
DocumentsByRun = dict[tuple[str, str], RunDocuments]  # (configuration key, model) -> the run's documents


def _documents(folder: ComparisonFolder, relative: str) -> RunDocuments:
    return RunDocuments.from_table(folder.stored_run(relative).read_documents())


def _tokens(folder: ComparisonFolder, relative: str) -> dict[str, np.ndarray]:
    table = folder.stored_run(relative).read_tokens(list(TOKEN_KEYS))
    return {c: table.column(c).to_numpy() for c in TOKEN_KEYS}


def build_results(out: Path) -> Results:
    """Every number of the comparison in `out`, from its stored files; written to out/results.json and returned
    as JSON reads it back (NaN and inf as None)."""
    folder = ComparisonFolder(Path(out))
    m: Manifest = folder.read_manifest()
    configs = [Configuration(**{k: v for k, v in c.items() if k != "computes"}) for c in m["configurations"]]
    main = main_configuration(configs)
    docs: DocumentsByRun = {}
    diagnostics = _tokenizer_diagnostics(m)
    rows = []
    for conf in configs:
        row, notes = _configuration_row(folder, m, conf, docs)
        rows.append(row)
        diagnostics += notes
    diagnostics += _paired_pass_diagnostics(folder, m)
    results = {
        "schema_version": SCHEMA_VERSION,
        "baseline": m["baseline"],
        "models": m["models"],
        "mode": m["mode"],
        "main_configuration": main.key,
        "configurations": rows,
        "leakage": _leakage(folder, m, configs),
        "position_profile": {"configuration": main.key, "models": _position_profiles(folder, m, main)},
        "doc_difference_histogram": {"configuration": main.key, "models": _doc_histograms(m, main, docs)},
        "tokenizers": m["tokenizers"],
        "diagnostics": diagnostics,
        "settings": {"bootstrap": m["bootstrap"], "seed": m["seed"], "corpus": m["corpus"],
                     "seq_len": m["config"]["layout"]["seq_len"], "versions": m["versions"]},
    }
    explanation = build_explanation(folder, m, docs)
    if explanation is not None:  # comparisons stored without one rebuild the results they had
        results["explanation"] = explanation
    results["findings"] = key_findings(results)
    results = clean(results)
    write_text(folder.results, json.dumps(results, indent=2) + "\n")
    return results


def _configuration_row(folder: ComparisonFolder, m: Manifest, conf: Configuration,
                       docs: DocumentsByRun) -> tuple[ConfigurationRow, list[Diagnostic]]:
    """One configuration's summaries and comparisons, with its diagnostics; keeps each run's RunDocuments in `docs`."""
    base, names = m["baseline"], list(m["models"])
    row = {**conf.to_dict(), "models": {}, "comparisons": {}}
    diagnostics = []
    for name in names:
        docs[(conf.key, name)] = _documents(folder, m["runs"][conf.key][name])
        summary = docs[(conf.key, name)].summary()
        vocab = m["models"][name]["vocab_size"]
        summary["ln_vocab"] = math.log(vocab)
        summary["near_uniform"] = near_uniform(summary["mean_nll"], vocab)
        row["models"][name] = summary
        run_summary = folder.stored_run(m["runs"][conf.key][name]).read_summary()
        diagnostics += _run_diagnostics(conf, name, summary, run_summary)
    for name in names:
        if name != base:
            row["comparisons"][name] = compare_docs(docs[(conf.key, base)], docs[(conf.key, name)], m["mode"],
                                                    m["bootstrap"], comparison_seed(m["seed"], names, name))
    return row, diagnostics


def _leakage(folder: ComparisonFolder, m: Manifest, configs: list[Configuration]) -> list[LeakagePair]:
    """Causal - block NLL by position, per model: within one model, so valid whatever the tokenizers."""
    pairs = []
    for block, causal in leakage_pairs(configs):
        per_model = {name: leakage_by_position(_tokens(folder, m["runs"][block.key][name]),
                                               _tokens(folder, m["runs"][causal.key][name])) for name in m["models"]}
        pairs.append({"label_offset": block.label_offset, "block": block.key, "causal": causal.key,
                      "models": per_model})
    return pairs


def _position_profiles(folder: ComparisonFolder, m: Manifest, main: Configuration) -> dict[str, list[PositionBucket]]:
    return {name: position_profile(_tokens(folder, m["runs"][main.key][name])) for name in m["models"]}


def _doc_histograms(m: Manifest, main: Configuration, docs: DocumentsByRun) -> dict[str, Histogram]:
    """Per-document mean loss differences (other - baseline) on the main configuration."""
    base = m["baseline"]
    out = {}
    for name in m["models"]:
        if name != base:
            a, b = docs[(main.key, base)], docs[(main.key, name)]
            scored = (a.n_tokens > 0) & (b.n_tokens > 0)
            out[name] = histogram(b.nll_sum[scored] / b.n_tokens[scored] - a.nll_sum[scored] / a.n_tokens[scored])
    return out


def _tokenizer_diagnostics(m: Manifest) -> list[Diagnostic]:
    out = []
    for name, check in m["tokenizers"].items():
        level = "info" if check["compatible"] else "warning"
        detail = "; ".join(check["differences"]) or "no differences"
        out.append({"level": level, "code": "tokenizer", "where": f"{m['baseline']} vs {name}",
                    "message": f"{check['verdict']} ({detail})"})
    return out


def _paired_pass_diagnostics(folder: ComparisonFolder, m: Manifest) -> list[Diagnostic]:
    """Each paired pass's float32 check, from the facts stored in its pairs/<other>.parquet (none for a pass
    written before it had one)."""
    e = m.get("explanation") or {}
    out = []
    for other, relative in e.get("pairs", {}).items():
        meta = json.loads((folder.read_stored(relative, []).schema.metadata or {}).get(b"lossgap", b"{}"))
        facts = meta.get("facts", {})
        if "fp32_check" in facts:
            names = (m["baseline"], other)
            dtypes = [model.get("dtype") for model in meta.get("models", {}).values()]
            where = f"{e['configuration']} / {names[0]} vs {other} (paired pass)"
            out.append(pair_fp32_diagnostic(where, facts, dtypes, meta.get("config", {}).get("run", {}), names))
    return out


def _run_diagnostics(conf: Configuration, name: str, summary: dict, run: dict) -> list[Diagnostic]:
    where = f"{conf.key} / {name}"
    out = []
    if summary["near_uniform"] and summary["mean_nll"] > summary["ln_vocab"]:
        out.append({"level": "warning", "code": "worse_than_uniform", "where": where,
                    "message": f"mean NLL {summary['mean_nll']:.3f} exceeds ln(vocab) = {summary['ln_vocab']:.3f}: "
                               "worse than a uniform guess; the model is untrained or broken, or targets misaligned"})
    elif summary["near_uniform"]:
        out.append({"level": "warning", "code": "near_uniform", "where": where,
                    "message": f"mean NLL {summary['mean_nll']:.3f} is near ln(vocab) = {summary['ln_vocab']:.3f}: "
                               "near-uniform predictions; targets are likely misaligned, e.g. labels shifted twice"
                               + (" (this row uses label offset 2)" if conf.label_offset == 2 else "")})
    if not math.isfinite(summary["mean_nll"]):
        out.append({"level": "error", "code": "non_finite", "where": where, "message": "NaN or inf in the losses"})
    if not run.get("complete", False):
        out.append({"level": "error", "code": "incomplete", "where": where, "message": str(run.get("error"))})
    probe = run.get("mask_probe")
    if probe:
        state = "passed" if probe["passed"] else "FAILED"
        out.append({"level": "info" if probe["passed"] else "error", "code": "mask_probe", "where": where,
                    "message": f"mask probe {state} ({probe['mask']} mask, {run['model']['attn_implementation']} "
                               f"attention): next document's logits moved by {probe['max_logit_shift']:.2g}"})
    out.append(run_fp32_diagnostic(where, run))
    if summary["truncated_context_tokens"]:
        share = summary["truncated_context_tokens"] / max(1, summary["n_tokens"])
        out.append({"level": "info", "code": "truncated", "where": where,
                    "message": f"{summary['truncated_context_tokens']:,} tokens ({share:.1%}) were predicted without "
                               "their whole document prefix (documents cut at a row or window edge)"})
    return out
