"""How much of D is sharpness, not ranking: results.json's `explanation.models.<other>.mechanisms.temperature`, from
pairs/<other>.temperature.json alone (run/temperature.py wrote it: each model's temperature fitted on a seeded sample
of the paired pass's rows, and per document of the sample the scored tokens and each model's NLL sum at T = 1 and at
its fitted T).

On the sample, D = mean(NLL_other - NLL_base) at T = 1; with each model at the temperature that minimises its own NLL
there, D_tempered = mean(NLL_other(T_o) - NLL_base(T_b)). The part a temperature change removes is D - D_tempered =
gain_other - gain_base (a model's gain, NLL at T = 1 less NLL at its T, is >= 0 on the sample it was fitted on); the
rest, D_tempered, is what no single temperature per model removes. The two add up to D (the rest is D less the
removed part: exactly, but for the rounding of that one subtraction). Every average has a document-bootstrap
interval, all from one draw of documents with the comparison's seed, so D on a sample that is the whole corpus has
the headline's interval.
"""

from __future__ import annotations

import math

import numpy as np

from .bootstrap import ratio_intervals
from .wording import interval_text, shown_as_zero

ROLES = ("baseline", "other")
FIGURES = ("d", "removed", "d_tempered", "gain_baseline", "gain_other")


def temperature_split(stored: dict, n_boot: int, seed: int) -> dict:
    """D on the sample split into the part the fitted temperatures remove and the rest, with intervals."""
    docs = stored["documents"]
    n = np.asarray(docs["n_tokens"], np.float64)
    nll = {key: np.asarray(docs[key], np.float64) for key in docs if key.startswith("nll_")}
    gain = {role: nll[f"nll_{role}"] - nll[f"nll_{role}_tempered"] for role in ROLES}
    sums = {"d": nll["nll_other"] - nll["nll_baseline"], "removed": gain["other"] - gain["baseline"],
            "d_tempered": nll["nll_other_tempered"] - nll["nll_baseline_tempered"],
            "gain_baseline": gain["baseline"], "gain_other": gain["other"]}
    total = float(n.sum())
    values = {key: float(s.sum() / total) if total else math.nan for key, s in sums.items()}
    values["d_tempered"] = values["d"] - values["removed"]  # the rest: removed + rest = D exactly
    low, high = ratio_intervals(np.column_stack([sums[k] for k in FIGURES]), n, n_boot, seed)
    spread = n.size > 1  # one document: a bootstrap shows no spread
    figures = {key: {"value": values[key], "ci_low": float(low[i]) if spread else None,
                     "ci_high": float(high[i]) if spread else None} for i, key in enumerate(FIGURES)}
    models = {}
    for role in ROLES:
        fit = stored["models"][role]
        models[role] = {**{k: fit[k] for k in ("name", "temperature", "beta", "steps", "converged", "logits_kept")},
                        "nll": float(nll[f"nll_{role}"].sum() / total) if total else math.nan,
                        "nll_tempered": float(nll[f"nll_{role}_tempered"].sum() / total) if total else math.nan,
                        "gain": figures[f"gain_{role}"]}
    d = values["d"]
    out = {"sample": stored["sample"], "n_tokens": int(total), "n_documents": int(n.size), "models": models,
           "d": figures["d"], "removed": figures["removed"], "d_tempered": figures["d_tempered"],
           "share_removed": values["removed"] / d if d > 0 and not shown_as_zero(d) else None}
    return out | {"sample_text": sample_text(out)}


def sample_text(tp: dict) -> str:
    """What the fit saw: the whole corpus, or a sample of it."""
    s = tp["sample"]
    if s.get("whole"):
        return f"all {tp['n_tokens']:,} scored tokens ({tp['n_documents']:,} documents)"
    return (f"a sample of {tp['n_tokens']:,} scored tokens from {tp['n_documents']:,} documents ({s['rows']:,} of "
            f"{s['rows_in_corpus']:,} rows, drawn under a budget of {s['token_budget']:,} tokens with seed "
            f"{s['seed']})")


def temperature_sentence(name: str, base: str, tp: dict) -> str:
    """The fitted temperatures and what they do to D, worded for every sign of D and of the change."""
    b, o = tp["models"]["baseline"], tp["models"]["other"]
    d, rest, removed = tp["d"]["value"], tp["d_tempered"]["value"], tp["removed"]
    meaning = " (T above 1: a distribution too sharp for the text, below 1: too flat)" if b["beta"] or o["beta"] else ""
    text = (f"Temperature (fitted on {tp['sample_text']}): {base}'s NLL is lowest {_at(b)} and {name}'s {_at(o)}"
            f"{meaning}, which lowers {base}'s NLL by {b['gain']['value']:.4f} and {name}'s by "
            f"{o['gain']['value']:.4f} nats/token")
    low, high = removed["ci_low"], removed["ci_high"]
    ci = interval_text({"n_documents": tp["n_documents"]}, None if high is None else -high,
                       None if low is None else -low)  # the change, tempered D - D: the removed part negated
    if shown_as_zero(d):
        return text + (f". On the sample the two models' losses are the same (D = {d:+.4f}); at their temperatures "
                       f"D is {rest:+.4f} ({ci} for the change).")
    text += f". At those temperatures D on the sample is {rest:+.4f} instead of {d:+.4f} nats/token"
    uniform = [label for label, m in ((base, b), (name, o)) if not m["beta"]]
    if uniform:  # a model no better than chance: tempering it to uniform says nothing about its sharpness
        who = " and ".join(uniform)
        verb, rank = ("predicts", "ranks") if len(uniform) == 1 else ("predict", "rank")
        return text + (f" ({-removed['value']:+.4f}, {ci}); but at beta = 0 {who} {verb} the uniform distribution: "
                       f"on this sample {who} {rank} the text's tokens no better than chance, so the change does not "
                       "measure sharpness.")
    if low is not None and high is not None and low <= 0 <= high:
        return text + f": the change ({-removed['value']:+.4f}, {ci}) is not shown at the 95% level."
    text += f" ({-removed['value']:+.4f}, {ci}): " + _effect(name, base, d, rest)
    if d > 0 and removed["value"] > 0 and rest > 0 and not shown_as_zero(rest):
        rest_ci = interval_text({"n_documents": tp["n_documents"]}, tp["d_tempered"]["ci_low"],
                                tp["d_tempered"]["ci_high"])
        text += (f"; the rest of D ({rest:+.4f}, {rest_ci}) is not sharpness: no temperature of either model "
                 "removes it")
    return text + "."


def _at(model: dict) -> str:
    """Where a model's NLL is lowest: at its fitted T, or (beta = 0) with the uniform distribution."""
    if not model["beta"]:
        return "with no temperature at all (beta = 0: the uniform distribution)"
    return f"at T = {model['temperature']:.3f}"


def _effect(name: str, base: str, d: float, rest: float) -> str:
    """What the fitted temperatures do to the difference, for every sign of D and of the tempered D."""
    gap = "gap" if d > 0 else f"advantage of {name}"
    if shown_as_zero(rest):
        return f"the temperatures close the {gap}: all of D is sharpness"
    if (rest > 0) != (d > 0):
        side = "better" if rest < 0 else "worse"
        more = ", so more than all of D is sharpness" if d > 0 else ""
        return f"the {gap} reverses: at their temperatures {name} is {side} than {base}{more}"
    share = abs(d - rest) / abs(d)
    if abs(rest) < abs(d):
        if d > 0:
            return f"sharpness accounts for {share:.0%} of D"
        return f"the temperatures take away {share:.0%} of the {gap}"
    return f"the temperatures widen the {gap} by {share:.0%}: no part of it is sharpness"
