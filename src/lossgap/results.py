"""results.json: every number of a comparison, with diagnostics and findings in plain words.

Built only from compare.json and the per-run Parquet files, so `lossgap report DIR` reproduces it exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .analysis import (
    DocTable,
    compare_docs,
    histogram,
    leakage_by_position,
    near_uniform,
    position_profile,
    read_tokens,
)
from .errors import LossgapError
from .matrix import Configuration, leakage_pairs

SCHEMA_VERSION = 1


def _load_manifest(out: Path) -> dict:
    path = out / "compare.json"
    if not path.is_file():
        raise LossgapError(f"{out}: no compare.json here", "point `lossgap report` at a folder `lossgap compare` wrote")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LossgapError(f"{path}: corrupt ({e.msg})", "run `lossgap compare` again") from None


def _run_file(out: Path, rel: str, name: str) -> Path:
    path = out / rel / name
    if not path.is_file():
        raise LossgapError(f"{path}: missing", "the per-token files of this comparison are incomplete; rerun compare")
    return path


def _read_docs(out: Path, rel: str) -> DocTable:
    path = _run_file(out, rel, "documents.parquet")
    try:
        return DocTable.read(path)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise LossgapError(f"{path}: not a readable Parquet file ({e})", "rerun compare") from None


def _read_tokens(out: Path, rel: str) -> dict:
    path = _run_file(out, rel, "tokens.parquet")
    try:
        return read_tokens(path)
    except Exception as e:
        raise LossgapError(f"{path}: not a readable Parquet file ({e})", "rerun compare") from None


def build_results(out: Path) -> dict:
    out = Path(out)
    m = _load_manifest(out)
    base, mode = m["baseline"], m["mode"]
    names = list(m["models"])
    configs = [Configuration(**{k: v for k, v in c.items() if k != "computes"}) for c in m["configurations"]]
    diagnostics = _tokenizer_diagnostics(m)
    rows = []
    docs_cache: dict[tuple[str, str], DocTable] = {}
    for conf in configs:
        entry = {**conf.to_dict(), "models": {}, "comparisons": {}}
        for name in names:
            docs = docs_cache[(conf.key, name)] = _read_docs(out, m["runs"][conf.key][name])
            summary = docs.summary()
            vocab = m["models"][name]["vocab_size"]
            summary["ln_vocab"] = math.log(vocab)
            summary["near_uniform"] = near_uniform(summary["mean_nll"], vocab)
            entry["models"][name] = summary
            run_summary = json.loads(_run_file(out, m["runs"][conf.key][name], "summary.json").read_text())
            diagnostics += _run_diagnostics(conf, name, summary, run_summary)
        for i, name in enumerate(names):
            if name != base:
                entry["comparisons"][name] = compare_docs(docs_cache[(conf.key, base)], docs_cache[(conf.key, name)],
                                                          mode, m["bootstrap"], m["seed"] + 1000 * i)
        rows.append(entry)

    leakage = []
    for block, causal in leakage_pairs(configs):  # within one model: valid whatever the tokenizers
        per_model = {name: leakage_by_position(_read_tokens(out, m["runs"][block.key][name]),
                                               _read_tokens(out, m["runs"][causal.key][name])) for name in names}
        leakage.append({"label_offset": block.label_offset, "block": block.key, "causal": causal.key,
                        "models": per_model})
    main = _main_configuration(configs)
    profile = {name: position_profile(_read_tokens(out, m["runs"][main.key][name])) for name in names}
    doc_hist = {}
    for name in names:
        if name != base:
            a, b = docs_cache[(main.key, base)], docs_cache[(main.key, name)]
            scored = (a.n_tokens > 0) & (b.n_tokens > 0)
            per_doc = b.nll_sum[scored] / b.n_tokens[scored] - a.nll_sum[scored] / a.n_tokens[scored]
            doc_hist[name] = histogram(per_doc)

    results = {
        "schema_version": SCHEMA_VERSION,
        "baseline": base,
        "models": m["models"],
        "mode": mode,
        "main_configuration": main.key,
        "configurations": rows,
        "leakage": leakage,
        "position_profile": {"configuration": main.key, "models": profile},
        "doc_difference_histogram": {"configuration": main.key, "models": doc_hist},
        "tokenizers": m["tokenizers"],
        "diagnostics": diagnostics,
        "settings": {"bootstrap": m["bootstrap"], "seed": m["seed"], "corpus": m["corpus"],
                     "seq_len": m["config"]["layout"]["seq_len"], "versions": m["versions"]},
    }
    from .findings import key_findings

    results["findings"] = key_findings(results)
    results = _finite(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _main_configuration(configs: list[Configuration]) -> Configuration:
    """The row the headline numbers come from: next-token targets, packed rows, block mask, when present."""
    for conf in configs:
        if (conf.label_offset, conf.layout, conf.mask) == (1, "packed", "block"):
            return conf
    return next((c for c in configs if c.label_offset == 1), configs[0])


def _tokenizer_diagnostics(m: dict) -> list[dict]:
    out = []
    for name, check in m["tokenizers"].items():
        level = "info" if check["compatible"] else "warning"
        detail = "; ".join(check["differences"]) or "no differences"
        out.append({"level": level, "code": "tokenizer", "where": f"{m['baseline']} vs {name}",
                    "message": f"{check['verdict']} ({detail})"})
    return out


def _run_diagnostics(conf: Configuration, name: str, summary: dict, run: dict) -> list[dict]:
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
    if summary["truncated_context_tokens"]:
        share = summary["truncated_context_tokens"] / max(1, summary["n_tokens"])
        out.append({"level": "info", "code": "truncated", "where": where,
                    "message": f"{summary['truncated_context_tokens']:,} tokens ({share:.1%}) were predicted without "
                               "their whole document prefix (documents cut at a row or window edge)"})
    return out


def _finite(obj):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj
