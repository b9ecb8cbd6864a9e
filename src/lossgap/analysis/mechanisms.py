"""Why the other model loses, from the paired pass's per-token statistics: results.json's
`explanation.models.<other>.mechanisms`.

- special_mass: the probability each model puts on the tokenizers' special and added control tokens (<|im_end|>,
  <|endoftext|>, ...) where the text's token is not one of them, and what D would be if each model's distribution
  were renormalised without them: exactly NLL + log(1 - p_special) per token, so "x % of D is probability spent on
  ending the turn" is a figure, not a guess. A target that is itself a control token keeps its NLL (renormalising it
  away would make it impossible).
- instead: what the other model predicts where its top-1 is not the text's token, grouped by that prediction (its
  token, its text class, and the pair text's token -> prediction), each group's contribution to D; the groups and the
  tokens where the other's top-1 is the text's token add up to D exactly (attribution.contributions).
- shifted: URIAL's token distribution shift, the baseline's rank of the other model's top-1, D split by it.
- temperature: how much of D is sharpness, not ranking: each model's NLL-minimising temperature, fitted on a sample of
  the paired pass's rows, and D split into the part those temperatures remove and the rest (temperature.py).

Every average has a document-bootstrap interval (bootstrap.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from .attribution import contributions, domain_buckets, position_buckets
from .bootstrap import ratio_interval
from .temperature import temperature_sentence, temperature_split
from .textclass import TEXT_CLASSES, class_codes

TOP_INSTEAD = 10  # groups named in each `instead` table; the rest are one bucket
TARGET_ITSELF = "(its top-1 is the text's token)"
ANY_OTHER = "(any other prediction)"
SHIFT_KINDS = ("unshifted", "marginal", "shifted")  # the baseline ranks the other's top-1 1st, 2nd-3rd, lower
MECHANISM_SEED = 50  # the mechanisms' bootstrap seeds start this far from the comparison's
P_FLOOR = 1e-7  # 1 - p_special held at least this (float32's resolution near 1): the renormalised NLL stays finite


def mechanism_report(tokens: Mapping[str, np.ndarray], vocab: pa.Table, doc_domain: Mapping[int, str],
                     special_ids: list[int] | None, n_boot: int, seed: int, temperature: dict | None = None) -> dict:
    """The mechanisms for one other model (special_mass only when the pairs file has p_special, temperature only with
    a stored temperature fit). `seed` is the comparison's (bootstrap.comparison_seed): the temperature split's D takes
    it, so D on a sample that is the whole corpus has the headline's interval; the others take their own offsets."""
    out: dict = {"instead": instead(tokens, vocab, n_boot, seed + MECHANISM_SEED)}
    if "rank_b_argmax_o" in tokens:
        out["shifted"] = shifted(tokens, doc_domain, n_boot, seed + MECHANISM_SEED + 20)
    if "p_special_b" in tokens and special_ids is not None:
        out["special_mass"] = special_mass(tokens, vocab, doc_domain, special_ids, n_boot, seed + MECHANISM_SEED + 10)
    if temperature is not None:
        out["temperature"] = temperature_split(temperature, n_boot, seed)
    return out


def _doc_index(doc_id) -> tuple[np.ndarray, np.ndarray]:
    return np.unique(np.asarray(doc_id), return_inverse=True)


def _mean(values: np.ndarray, weights: np.ndarray, doc_idx: np.ndarray, n_docs: int, n_boot: int,
          seed: int) -> dict:
    """sum(values) / sum(weights) with its document-bootstrap interval."""
    total = float(weights.sum())
    lo, hi = ratio_interval(np.bincount(doc_idx, weights=values, minlength=n_docs),
                            np.bincount(doc_idx, weights=weights, minlength=n_docs), n_boot, seed)
    return {"value": float(values.sum() / total) if total else float("nan"), "ci_low": lo, "ci_high": hi}


def special_mass(tokens: Mapping[str, np.ndarray], vocab: pa.Table, doc_domain: Mapping[int, str],
                 special_ids: list[int], n_boot: int, seed: int) -> dict:
    """Probability on control tokens where the target is text, per model (mean, per domain), the share of tokens
    whose top-1 is a control token, and D with both distributions renormalised without them."""
    target = np.asarray(tokens["target"])
    delta = np.asarray(tokens["nll_o"], np.float64) - np.asarray(tokens["nll_b"], np.float64)
    text = ~np.isin(target, special_ids)
    docs, doc_idx = _doc_index(tokens["doc_id"])
    ones = np.ones(target.size)
    per_model = {}
    for role in ("b", "o"):
        p = np.asarray(tokens[f"p_special_{role}"], np.float64)
        top_special = np.isin(np.asarray(tokens[f"argmax_{role}"]), special_ids)
        per_model[role] = {"mean_p_special": _mean(np.where(text, p, 0.0), text.astype(float), doc_idx, docs.size,
                                                   n_boot, seed + (role == "o")),
                           "top1_special_share": float(top_special[text].mean()) if text.any() else float("nan")}
    # renormalised: NLL' = NLL + log(1 - p_special) on text targets; D' - D is the mean of the two models' terms
    keep = {role: np.log(np.maximum(1.0 - np.asarray(tokens[f"p_special_{role}"], np.float64), P_FLOOR))
            for role in ("b", "o")}
    shift = np.where(text, keep["o"] - keep["b"], 0.0)  # D' = D + mean(shift)
    d = float(delta.mean())
    removed = _mean(-shift, ones, doc_idx, docs.size, n_boot, seed + 2)
    domains, labels = domain_buckets(tokens["doc_id"], doc_domain)
    per_domain = {}
    for i, label in enumerate(labels):
        here = domains == i
        if not here.any():
            continue
        in_domain = np.bincount(doc_idx, weights=here, minlength=docs.size) > 0  # a document has one domain
        lo, hi = ratio_interval(np.bincount(doc_idx, weights=-shift, minlength=docs.size)[in_domain],
                                np.bincount(doc_idx, minlength=docs.size)[in_domain], n_boot, seed + 3)
        per_domain[label] = {"n_tokens": int(here.sum()), "d": float(delta[here].mean()),
                             "n_documents": int(in_domain.sum()), "removed": float(-shift[here].mean()),
                             "removed_ci": [lo, hi] if in_domain.sum() > 1 else None,  # no spread in one document
                             **{f"mean_p_special_{role}": float(np.asarray(tokens[f"p_special_{role}"])[here & text]
                                                                .mean()) if (here & text).any() else float("nan")
                                for role in ("b", "o")}}
    names = vocab.column("text").to_pylist()
    return {"special_ids": list(special_ids), "special_tokens": [names[i] for i in special_ids if i < len(names)],
            "text_tokens": int(text.sum()), "n_tokens": int(target.size), "models": per_model, "d": d,
            "removed": removed, "d_renormalised": d - removed["value"],
            "share_of_d": removed["value"] / d if d else float("nan"), "per_domain": per_domain}


def shifted(tokens: Mapping[str, np.ndarray], doc_domain: Mapping[int, str], n_boot: int, seed: int) -> dict:
    """URIAL's token distribution shift, teacher-forced on the corpus: the baseline's rank of the other's top-1
    (unshifted: the baseline's own top-1; marginal: its 2nd or 3rd; shifted: further down). D split by it (adding up to
    D), and the share of tokens in each kind by domain and by position."""
    kind = np.digitize(np.asarray(tokens["rank_b_argmax_o"], np.int64), [1, 3])  # rank 0 -> 0, 1-2 -> 1, 3 -> 2
    result = contributions(tokens["nll_b"], tokens["nll_o"], tokens["doc_id"], kind, list(SHIFT_KINDS), n_boot, seed)

    def shares(bucket: np.ndarray, labels: list[str]) -> dict:
        out = {}
        for i, label in enumerate(labels):
            here = bucket == i
            if here.any():
                counts = np.bincount(kind[here], minlength=len(SHIFT_KINDS))
                out[label] = {"n_tokens": int(here.sum()),
                              **{k: float(c / here.sum()) for k, c in zip(SHIFT_KINDS, counts, strict=True)}}
        return out

    return {**result, "by_domain": shares(*domain_buckets(tokens["doc_id"], doc_domain)),
            "by_position": shares(*position_buckets(tokens["pos"]))}


def instead(tokens: Mapping[str, np.ndarray], vocab: pa.Table, n_boot: int, seed: int, k: int = TOP_INSTEAD) -> dict:
    """D split by what the other model predicts where its top-1 is not the text's token: by that token (the k with
    the largest summed Δ, the rest as one bucket), by its text class, and by (text's token -> prediction)."""
    target, top = np.asarray(tokens["target"]), np.asarray(tokens["argmax_o"])
    nll_b, nll_o, doc_id = tokens["nll_b"], tokens["nll_o"], tokens["doc_id"]
    delta = np.asarray(nll_o, np.float64) - np.asarray(nll_b, np.float64)
    wrong = top != target
    names = vocab.column("text").to_pylist()

    def split(keys: np.ndarray, label, seed: int) -> dict:
        """The k keys (among wrong tokens) with the largest summed Δ, any other, and the target itself."""
        uniq, idx = np.unique(keys[wrong], return_inverse=True)
        sums = np.bincount(idx, weights=delta[wrong], minlength=uniq.size)
        chosen = uniq[np.argsort(-sums, kind="stable")[:k]]
        slot = {key: i for i, key in enumerate(chosen.tolist())}
        bucket = np.full(target.size, len(chosen) + 1, dtype=np.int64)  # the target itself
        bucket[wrong] = [slot.get(key, len(chosen)) for key in keys[wrong].tolist()]
        labels = [label(key) for key in chosen.tolist()] + [ANY_OTHER, TARGET_ITSELF]
        result = contributions(nll_b, nll_o, doc_id, bucket, labels, n_boot, seed)
        keys_of = {label(key): key for key in chosen.tolist()}
        for row in result["buckets"]:
            if row["bucket"] in keys_of:
                row["key"] = keys_of[row["bucket"]]
        return result

    classes = class_codes(vocab)
    by_class = np.where(wrong, classes[top], len(TEXT_CLASSES))
    return {
        "by_prediction": split(top, lambda t: f"{names[t]!r}", seed),
        "by_class": contributions(nll_b, nll_o, doc_id, by_class, [*TEXT_CLASSES, TARGET_ITSELF], n_boot, seed + 1),
        "by_pair": split(target.astype(np.int64) * len(names) + top,
                         lambda key: f"{names[key // len(names)]!r} -> {names[key % len(names)]!r}", seed + 2),
        "wrong_share": float(wrong.mean()) if wrong.size else float("nan"),
    }


def mechanism_findings(name: str, base: str, mech: dict | None) -> list[str]:
    """The mechanisms in words, each figure with its interval; worded for either sign of D and of the change."""
    if not mech:
        return []
    out = []
    if mech.get("special_mass"):
        out.append(_special_sentence(name, base, mech["special_mass"]))
    if mech.get("shifted"):
        out.append(_shift_sentence(name, base, mech["shifted"]))
    if mech.get("temperature"):
        out.append(temperature_sentence(name, base, mech["temperature"]))
    sentence = _instead_sentence(name, mech.get("instead") or {})
    if sentence:
        out.append(sentence)
    return out


def _special_sentence(name: str, base: str, sm: dict) -> str:
    o, b = sm["models"]["o"], sm["models"]["b"]
    p = o["mean_p_special"]
    tokens = ", ".join(t for t in sm["special_tokens"][:4] if t) or f"{len(sm['special_ids'])} tokens"
    text = (f"Control tokens: where the text's token is not one, {name} puts {p['value']:.1%} of its probability "
            f"(95% CI {p['ci_low']:.1%} to {p['ci_high']:.1%}) on its tokenizer's control tokens ({tokens}), "
            f"{base} {b['mean_p_special']['value']:.1%}; {name}'s top-1 is a control token on "
            f"{o['top1_special_share']:.1%} of those tokens, {base}'s on {b['top1_special_share']:.1%}.")
    removed = sm["removed"]
    text += (f" With both distributions renormalised without them, D is {sm['d_renormalised']:+.4f} instead of "
             f"{sm['d']:+.4f} nats/token")
    low, high = removed["ci_low"], removed["ci_high"]
    if low <= 0 <= high:
        return text + f" (a change of {-removed['value']:+.4f}, not shown at the 95% level)."
    change = f"{-removed['value']:+.4f} nats/token, 95% CI {-high:+.4f} to {-low:+.4f}"
    if sm["d"] > 0 and removed["value"] > 0:
        part = "more than all" if removed["value"] >= sm["d"] else f"{sm['share_of_d']:.0%}"
        text += f": probability spent on control tokens accounts for {part} of D ({change})"
    else:
        text += f" ({change})"
    domains = {k: v for k, v in sm["per_domain"].items() if v["n_tokens"]}
    if len(domains) > 1 and removed["value"] > 0:
        weight = {k: v["removed"] * v["n_tokens"] for k, v in domains.items()}
        top = max(weight, key=weight.get)
        share = weight[top] / sum(weight.values()) if sum(weight.values()) > 0 else float("nan")
        where = "most of it" if share > 0.5 else "the largest part"
        text += (f"; {where} on {top} ({share:.0%} of the change; there {name} puts "
                 f"{domains[top]['mean_p_special_o']:.1%} of its probability on them)")
    return text + "."


def _instead_sentence(name: str, ins: dict) -> str | None:
    by, pairs = ins.get("by_prediction"), ins.get("by_pair")
    if not by or not pairs:
        return None
    costly = [b for b in by["buckets"] if "key" in b and b["contribution"] > 0][:3]
    costly_pairs = [b for b in pairs["buckets"] if "key" in b and b["contribution"] > 0][:3]
    if not costly:
        return None

    def listed(rows) -> str:
        return ", ".join(f"{r['bucket']} ({r['n_tokens']} tokens, {r['contribution']:+.4f} nats/token"
                         + (f", {r['share_of_diff']:.0%} of D" if by["diff"] > 0 else "") + ")" for r in rows)

    text = (f"What {name} predicts instead: its top-1 is not the text's token on {ins['wrong_share']:.0%} of "
            f"tokens; the predictions that cost it most there are {listed(costly)}")
    if costly_pairs:
        text += f"; by the text's token and the prediction, {listed(costly_pairs)}"
    return text + "."


def _shift_sentence(name: str, base: str, sh: dict) -> str:
    rows = {b["bucket"]: b for b in sh["buckets"]}
    parts = {k: rows.get(k, {"share_tokens": 0.0, "share_of_diff": 0.0, "contribution": 0.0}) for k in SHIFT_KINDS}
    text = (f"Token shift (URIAL's measure, teacher-forced on this corpus): {name}'s top-1 is {base}'s own top-1 on "
            f"{parts['unshifted']['share_tokens']:.0%} of tokens, {base}'s 2nd or 3rd on "
            f"{parts['marginal']['share_tokens']:.0%} (marginal) and further down on "
            f"{parts['shifted']['share_tokens']:.0%} (shifted)")
    s = rows.get("shifted")
    if s and sh["diff"] > 0 and s["contribution"] > 0:
        text += (f"; the shifted tokens carry {s['share_of_diff']:.0%} of D ({s['contribution']:+.4f} nats/token, 95% "
                 f"CI {s['ci_low']:+.4f} to {s['ci_high']:+.4f})")
    elif s:
        text += f"; the shifted tokens contribute {s['contribution']:+.4f} nats/token to D = {sh['diff']:+.4f}"
    return text + "."
