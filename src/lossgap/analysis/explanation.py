"""Where the difference comes from: results.json's `explanation`, built from the stored files alone (the paired
pass's pairs/<other>.parquet, each run's tokens.parquet, the vocabulary tables), so `lossgap report DIR` rebuilds it.

Per other model: the distribution statistics (llama.cpp's set with document-bootstrap intervals; divergence.py), an
attribution of the difference D that adds up along every dimension (attribution.py), calibration (calibration.py),
the chat-formatted run paired against the same baseline tokens, and the token-level view of the top spans. Models
with different tokenizers get the byte-class attribution in bits per byte instead.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..formats.columns import stored_names
from ..formats.paths import ComparisonFolder
from ..formats.schema import Manifest
from .attribution import attribute, before_in_document, byte_class_contributions, top_documents, top_spans
from .bootstrap import comparison_seed, ratio_interval
from .calibration import calibration_report
from .chat_findings import change_effect
from .divergence import divergence_report
from .documents import RunDocuments
from .layers import layer_report
from .mechanisms import mechanism_report
from .precision import pair_check_text
from .stats import histogram
from .textclass import TokenTexts

VIEW_SPANS = 6  # spans per direction in the token view
VIEW_CONTEXT = 8  # scored tokens shown before and after a span
VIEW_DOCUMENTS = 2  # documents per direction in the token view
VIEW_DOCUMENT_TOKENS = 300  # a document's first tokens shown
RUN_COLUMNS = ["doc_id", "pos", "target", "nll"]  # what the explanation reads of a run's tokens.parquet


def build_explanation(folder: ComparisonFolder, m: Manifest,
                      docs: dict[tuple[str, str], RunDocuments]) -> dict | None:
    """results.json's `explanation`, or None when the comparison recorded none (older comparisons, --no-explain)."""
    e = m.get("explanation")
    if not e:
        return None
    base, main = m["baseline"], e["configuration"]
    vocab = {name: folder.read_stored(path) for name, path in e["vocab"].items()}
    table = docs[(main, base)]
    doc_domain = dict(zip(table.doc_id.tolist(), table.domain.tolist(), strict=True))
    models = {}
    for other in (n for n in m["models"] if n != base):
        seed = comparison_seed(m["seed"], list(m["models"]), other)  # the headline's draws: one interval of D
        entry: dict = {"skipped": e["skipped"].get(other)}
        if other in e["pairs"]:
            meta = _pair_metadata(folder, e["pairs"][other])
            facts = meta.get("facts") or {}
            fitted = (e.get("temperature") or {}).get(other)  # absent before the temperature fit was stored
            entry |= _paired(_pair_tokens(folder, e["pairs"][other], base, other), vocab[base], doc_domain,
                             m["bootstrap"], seed, facts.get("special_ids"),
                             folder.read_stored_json(fitted) if fitted else None)
            check = facts.get("fp32_check")
            entry["paired_pass"] = {"dtype": {n: d.get("dtype") for n, d in (meta.get("models") or {}).items()},
                                    "plan": facts.get("plan"), "fp32_check": check,
                                    "fp32_check_text": pair_check_text(check, (base, other)) if check else None}
        elif m["mode"] == "tokens":
            entry["attribution"] = attribute(_run_tokens(folder, m, main, base, other), vocab[base], doc_domain,
                                             m["bootstrap"], seed)
        else:
            entry["bits_per_byte"] = _byte_classes(folder, m, main, base, other, vocab, docs, seed)
        if other in e["chat_runs"] and m["mode"] == "tokens":
            entry["chat"] = _chat(folder, m, main, (base, other), e["chat_runs"][other], vocab, doc_domain, seed)
            by_turn = (e.get("chat_runs_by_turn") or {}).get(other) or []
            if len(by_turn) > 1:
                entry["chat"]["turns"] = _chat_turns(folder, m, main, base, other, by_turn,
                                                     e.get("chat_user_turns") or [], seed)
        if other in (e.get("layers") or {}):
            entry["layers"] = layer_report(folder, e["layers"][other], m["bootstrap"], seed)
        models[other] = entry
    return {"configuration": main, "chat_user_turn": e.get("chat_user_turn"),
            "chat_user_turns": e.get("chat_user_turns"), "models": models}


def _chat_turns(folder: ComparisonFolder, m: Manifest, main: str, base: str, other: str, runs: list[str],
                turns: list[str], seed: int) -> dict:
    """The format's change of D after each sampled user turn, on the tokens the raw and that turn's chat-formatted
    run share, and its spread over the turns: one turn is one sample of the prompts a user might give."""
    raw = _run_tokens(folder, m, main, base, other)
    per = []
    for i, rel in enumerate(runs):
        chat, shared, _ = _chat_tokens(folder, raw, other, rel)
        # the first turn's seed is _chat's: the same quantity has one interval wherever it is shown
        change = chat_change(raw, chat, shared, m["bootstrap"], seed + 3 + 17 * i)
        per.append({"turn": turns[i] if i < len(turns) else None, "run": rel, **change})
    changes = np.array([-p["reduction"] for p in per])  # chat - raw
    return {"per_turn": per, "change_mean": float(changes.mean()), "change_min": float(changes.min()),
            "change_max": float(changes.max()), "change_sd": float(changes.std(ddof=1)) if changes.size > 1 else 0.0}


def _paired(tokens: dict, vocab: pa.Table, doc_domain: dict, n_boot: int, seed: int,
            special_ids: list[int] | None = None, temperature: dict | None = None) -> dict:
    """Everything the paired pass makes possible for one other model."""
    attribution = attribute(tokens, vocab, doc_domain, n_boot, seed)
    return {
        "distribution": divergence_report(tokens, doc_domain, n_boot, seed + 1),
        "kl_histogram": histogram(np.log10(np.maximum(np.asarray(tokens["kl_bo"], dtype=np.float64), 1e-8))),
        "attribution": attribution,
        "calibration": calibration_report(tokens),
        "mechanisms": mechanism_report(tokens, vocab, doc_domain, special_ids, n_boot, seed, temperature),
        "truncation": truncation(tokens, n_boot, seed + 60) if "truncated" in tokens else None,
        "token_view": token_view(tokens, vocab),
    }


def truncation(tokens: dict, n_boot: int, seed: int) -> dict:
    """How many scored tokens were predicted without their whole document (cut at a row edge), and the main figures
    (D, mean KL, same top-1) over the tokens with their whole context and over the truncated ones, each a mean over
    documents' tokens with its document-bootstrap interval."""
    cut = np.asarray(tokens["truncated"], bool)
    docs, idx = np.unique(np.asarray(tokens["doc_id"]), return_inverse=True)
    values = {"d": np.asarray(tokens["nll_o"], np.float64) - np.asarray(tokens["nll_b"], np.float64),
              "kl_bo": np.asarray(tokens["kl_bo"], np.float64),
              "same_top1": np.asarray(tokens["top1_agree"], np.float64)}
    out: dict = {"n_tokens": int(cut.size), "truncated_tokens": int(cut.sum()),
                 "share_truncated": float(cut.mean()) if cut.size else float("nan")}
    for label, here in (("whole_context", ~cut), ("truncated", cut)):
        n = np.bincount(idx, weights=here, minlength=docs.size)
        present = n > 0
        figures = {"n_tokens": int(here.sum()), "n_documents": int(present.sum())}
        for i, (name, v) in enumerate(values.items()):
            sums = np.bincount(idx, weights=np.where(here, v, 0.0), minlength=docs.size)
            lo, hi = ratio_interval(sums[present], n[present], n_boot, seed + i) if present.sum() > 1 else (None, None)
            figures[name] = {"value": float(v[here].mean()) if here.any() else None, "ci_low": lo, "ci_high": hi}
        out[label] = figures
    return out


def _pair_metadata(folder: ComparisonFolder, relative: str) -> dict:
    """The paired pass's metadata, stored in its file: the models as loaded and the pass's facts (special_ids,
    fp32_check, plan, ...); {} where unreadable."""
    metadata = pq.read_schema(folder.root / relative).metadata or {}
    try:
        found = json.loads(metadata.get(b"lossgap", b"{}"))
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _pair_tokens(folder: ComparisonFolder, relative: str, base: str, other: str) -> dict[str, np.ndarray]:
    """A pairs file's columns under their roles (formats/columns.py: nll_b, nll_o, ..., kl_bo, kl_ob, top1_agree);
    a column declared since the file was written is absent."""
    table = folder.read_stored(relative)
    return {role: table.column(name).to_numpy() for role, name in stored_names(base, other).items()
            if name in table.column_names and role != "domain"}


def _tokens(folder: ComparisonFolder, relative: str) -> pa.Table:
    return folder.stored_run(relative).read_tokens(RUN_COLUMNS)


def _run_tokens(folder: ComparisonFolder, m: Manifest, main: str, base: str, other: str,
                other_relative: str | None = None) -> dict:
    """Two runs of the same tokens (token-level comparisons) joined: the baseline's and the other model's NLL."""
    a = _tokens(folder, m["runs"][main][base])
    b = _tokens(folder, other_relative or m["runs"][main][other])
    same = all(a.column(c).equals(b.column(c)) for c in ("doc_id", "pos", "target"))
    if not same:
        raise ValueError(f"{base} and {other} runs scored different tokens")
    return {"doc_id": a.column("doc_id").to_numpy(), "pos": a.column("pos").to_numpy(),
            "target": a.column("target").to_numpy(), "nll_b": a.column("nll").to_numpy(),
            "nll_o": b.column("nll").to_numpy()}


def _chat(folder: ComparisonFolder, m: Manifest, main: str, names: tuple[str, str], rel: str, vocab: dict,
          doc_domain: dict, seed: int) -> dict:
    """The other model's chat-formatted run paired against the same baseline tokens as its raw run: D by the same
    dimensions, and the change the format makes (with a document-bootstrap interval), overall and per domain, over
    the tokens both runs share: all of them, but under --chat-end-of-turn each whole document's final target, which
    `final_targets` names and gives apart (and with all tokens)."""
    base, other = names
    raw = _run_tokens(folder, m, main, base, other)
    chat, shared, ends = _chat_tokens(folder, raw, other, rel)
    attribution = attribute(_where(chat, shared), vocab[base], doc_domain, m["bootstrap"], seed, top_k=10)
    overall = chat_change(raw, chat, shared, m["bootstrap"], seed + 3)
    whole = attribution["dimensions"]["position"]
    effect = _effect(names, overall | {"chat_diff": whole["diff"], "n_documents": whole.get("n_documents")})
    final = final_targets(raw, chat, shared, ends, (vocab[base], vocab.get(other, vocab[base])), m["bootstrap"],
                          seed + 80, names)  # past the per-domain seeds (seed + 4 + i)
    return {"run": rel, "raw_diff": overall["raw_diff"], "chat_diff": whole["diff"],
            "reduction": overall["reduction"], "reduction_ci": overall["reduction_ci"],
            "share_of_raw_explained": overall["share_of_raw_explained"], "effect": effect, "final_targets": final,
            "per_domain": _chat_per_domain(raw, chat, doc_domain, m["bootstrap"], seed + 4, shared),
            "attribution": attribution}


def _chat_tokens(folder: ComparisonFolder, raw: dict, other: str, rel: str) -> tuple[dict, np.ndarray, tuple]:
    """A chat-formatted run joined with the baseline's tokens as `raw` (_run_tokens) is; which tokens it shares with
    the raw run (the same target); and (EOS id, end-of-turn id) from its summary. Only each whole document's final
    target may differ, the raw run's EOS against the end-of-turn token (--chat-end-of-turn)."""
    t = _tokens(folder, rel)
    if not all(np.array_equal(t.column(c).to_numpy(), raw[c]) for c in ("doc_id", "pos")):
        raise ValueError(f"{other}'s chat-formatted run {rel} scored other tokens than its raw run")
    summary = folder.stored_run(rel).read_summary()
    ends = ((summary.get("special_tokens") or {}).get("eos_id"), summary.get("chat_end_of_turn_id"))
    target = t.column("target").to_numpy()
    shared = target == raw["target"]
    final = np.zeros(shared.size, dtype=bool) if None in ends else (
        _last_of_document(raw["doc_id"], raw["pos"]) & (raw["target"] == ends[0]) & (target == ends[1]))
    if (~shared & ~final).any():
        raise ValueError(f"{other}'s chat-formatted run {rel} scored other targets than its raw run, not only each "
                         "whole document's final one")
    return {**raw, "target": target, "nll_o": t.column("nll").to_numpy()}, shared, ends


def _last_of_document(doc_id: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Whether each token is its document's last scored one."""
    order = np.lexsort((pos, doc_id))
    ordered = np.asarray(doc_id)[order]
    last = np.empty(ordered.size, dtype=bool)
    last[order] = np.r_[ordered[1:] != ordered[:-1], True] if ordered.size else np.zeros(0, dtype=bool)
    return last


def _where(tokens: dict, sel: np.ndarray) -> dict:
    return {k: np.asarray(v)[sel] for k, v in tokens.items()}


def _effect(names: tuple[str, str], change: dict) -> str:
    """What the format does to D, worded by chat_findings.change_effect from the change's numbers."""
    low, high = (math.nan if v is None else v for v in change["reduction_ci"])
    return change_effect(names[1], names[0], change["raw_diff"], change["chat_diff"], (-high, -low),
                         change.get("n_documents") == 1)


def final_targets(raw: dict, chat: dict, shared: np.ndarray, ends: tuple, vocabs: tuple, n_boot: int, seed: int,
                  names: tuple[str, str]) -> dict:
    """Each whole document's final target in the raw and in the chat-formatted run (the EOS; under
    --chat-end-of-turn the template's end-of-turn token in the chat-formatted run), how many targets differ between
    the runs, and where they do, the change over all tokens and over those final targets alone."""
    eos, end = ends
    named = [None if i is None else {"id": int(i), "text": TokenTexts.of(v).alone(int(i))}
             for i, v in ((eos, vocabs[0]), (eos if end is None else end, vocabs[1]))]
    out = {"end_of_turn": end is not None, "raw": named[0], "chat": named[1], "n_tokens": int(shared.size),
           "n_shared": int(shared.sum()), "n_differ": int((~shared).sum())}
    if not shared.all():
        for key, sel, s in (("all_tokens", np.ones(shared.size, dtype=bool), seed), ("final", ~shared, seed + 1)):
            change = chat_change(raw, chat, sel, n_boot, s)
            out[key] = change | {"effect": _effect(names, change)}
    return out


def chat_change(raw: dict, chat: dict, sel: np.ndarray, n_boot: int, seed: int) -> dict:
    """Over the selected tokens: D of the raw and of the chat-formatted run, what the format takes away (raw - chat)
    with a document-bootstrap interval, and that as a share of the raw D."""
    nll_b = np.asarray(raw["nll_b"], np.float64)[sel]
    nll_raw = np.asarray(raw["nll_o"], np.float64)[sel]
    nll_chat = np.asarray(chat["nll_o"], np.float64)[sel]
    docs, idx = np.unique(np.asarray(raw["doc_id"])[sel], return_inverse=True)
    gain = nll_raw - nll_chat
    sums = np.bincount(idx, weights=gain, minlength=docs.size)
    lo, hi = ratio_interval(sums, np.bincount(idx, minlength=docs.size), n_boot, seed)
    raw_diff, reduction = float((nll_raw - nll_b).mean()), float(gain.mean())
    return {"n_tokens": int(gain.size), "n_documents": int(docs.size), "raw_diff": raw_diff,
            "chat_diff": float((nll_chat - nll_b).mean()), "reduction": reduction, "reduction_ci": [lo, hi],
            "share_of_raw_explained": reduction / raw_diff if raw_diff else float("nan")}


def _chat_per_domain(raw: dict, chat: dict, doc_domain: dict, n_boot: int, seed: int,
                     sel: np.ndarray | None = None) -> dict:
    """chat_change per domain over the selected tokens (default all), domains sorted (domain i gets seed + i)."""
    sel = np.ones(np.asarray(raw["doc_id"]).size, dtype=bool) if sel is None else sel
    docs, idx = np.unique(np.asarray(raw["doc_id"]), return_inverse=True)
    token_domain = np.array([str(doc_domain[int(d)]) for d in docs], dtype=object)[idx]
    return {domain: chat_change(raw, chat, (token_domain == domain) & sel, n_boot, seed + i)
            for i, domain in enumerate(sorted(set(token_domain[sel].tolist())))}


def _byte_classes(folder: ComparisonFolder, m: Manifest, main: str, base: str, other: str, vocab: dict, docs: dict,
                  seed: int) -> dict:
    """Models with different tokenizers: each model's own tokens, their loss spread over their bytes by class."""
    per = {}
    for name in (base, other):
        t = _tokens(folder, m["runs"][main][name])
        per[name] = {"doc_id": t.column("doc_id").to_numpy(), "target": t.column("target").to_numpy(),
                     "nll": t.column("nll").to_numpy()}
    table = docs[(main, base)]
    return byte_class_contributions(per[base], per[other], vocab[base], vocab[other], table.doc_id, table.n_bytes,
                                    m["bootstrap"], seed)


def token_view(tokens: dict, vocab: pa.Table, spans: int = VIEW_SPANS, context: int = VIEW_CONTEXT) -> dict:
    """The top spans each way with a few scored tokens around them, and the top documents each way (their first
    VIEW_DOCUMENT_TOKENS tokens), token by token: its text, both NLLs, both top-1 predictions and KL(baseline ||
    other), for the report's coloured view. Rows: [text, nll_b, nll_o, top1_b, top1_o, kl, highlighted, special].
    The texts of a block are the block decoded as a whole (TokenTexts.span: no character cut in halves), special
    tokens by name and flagged, so the view can set them apart."""
    order = np.lexsort((tokens["pos"], tokens["doc_id"]))
    t = {k: np.asarray(v)[order] for k, v in tokens.items()}
    texts = TokenTexts.of(vocab)
    doc_idx = np.unique(t["doc_id"], return_inverse=True)[1]
    doc_start = np.searchsorted(t["doc_id"], np.unique(t["doc_id"]))
    starts = dict(zip(np.unique(t["doc_id"]).tolist(), doc_start.tolist(), strict=True))
    ends = dict(zip(np.unique(t["doc_id"]).tolist(), [*doc_start[1:].tolist(), t["doc_id"].size], strict=True))

    def cells(lo: int, hi: int, first: int, last: int) -> list[list]:
        shown = texts.span(t["target"][lo:hi], before_in_document(t["target"], doc_idx, lo))
        return [[shown[j - lo], round(float(t["nll_b"][j]), 4), round(float(t["nll_o"][j]), 4),
                 texts.alone(int(t["argmax_b"][j])), texts.alone(int(t["argmax_o"][j])), round(float(t["kl_bo"][j]), 4),
                 first <= j <= last, texts.is_special(int(t["target"][j]))] for j in range(lo, hi)]

    view: dict = {}
    for direction, rows in top_spans(t["doc_id"], t["pos"], t["nll_b"], t["nll_o"], k=spans).items():
        view[direction] = []
        for row in rows:
            start = starts[row["doc_id"]]
            first = start + int(np.searchsorted(t["pos"][start:ends[row["doc_id"]]], row["first_pos"]))
            last = first + row["n_tokens"] - 1
            lo, hi = max(first - context, start), min(last + context + 1, ends[row["doc_id"]])
            view[direction].append({**{k: row[k] for k in ("doc_id", "first_pos", "last_pos", "delta_sum")},
                                    "tokens": cells(lo, hi, first, last)})
    view["documents"] = {}
    for direction, docs in top_documents(t["doc_id"], t["nll_b"], t["nll_o"], k=VIEW_DOCUMENTS).items():
        view["documents"][direction] = []
        for d in docs:
            start = starts[d["doc_id"]]
            shown = cells(start, min(ends[d["doc_id"]], start + VIEW_DOCUMENT_TOKENS), 0, t["doc_id"].size)
            view["documents"][direction].append({k: d[k] for k in ("doc_id", "n_tokens", "delta_sum")}
                                                | {"tokens": shown})
    return view
