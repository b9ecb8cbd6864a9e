"""Which weights carry the gap (--layers): results.json's `explanation.models[<other>].layers`, from the pair's
stored layer attribution (pairs/<other>.layers.json and .layers.parquet, written by run/layers.py).

D of a hybrid is its NLL minus the baseline's, per scored token of the sample, with a document-bootstrap interval
(one draw of documents serves every column, so the figures describe the same resamples). A block's `only` is D with
that block alone from the other model; its `kept` is D with that block alone kept from the baseline, so D(1) − kept
is what removing the block's change from the other model recovers. `interaction` is how far the single-block effects
fail to add up to D(1).
"""

from __future__ import annotations

import math

import numpy as np

from ..formats.paths import ComparisonFolder, read_json, read_parquet
from .bootstrap import ratio_intervals
from .wording import shown_as_zero

EQUAL = 1e-9  # |D| below this is no difference (fp32 sums of identical models differ by 0)


def layer_report(folder: ComparisonFolder, relative: str, n_boot: int, seed: int) -> dict:
    """The layer attribution's figures and findings."""
    record = read_json(folder.root / relative)
    table = read_parquet(folder.root / record["sums"])
    tokens = table["tokens"].to_numpy()
    base = table["alpha_0"].to_numpy()
    columns = [h["column"] for h in record["hybrids"]]
    diffs = np.stack([table[c].to_numpy() - base for c in columns], axis=1)
    lo, hi = ratio_intervals(diffs, tokens, n_boot, seed)
    total = max(float(tokens.sum()), 1.0)
    d = {c: {"d": float(diffs[:, i].sum() / total), "ci": [float(lo[i]), float(hi[i])]}
         for i, c in enumerate(columns)}
    d_one = d["alpha_1"]["d"]
    out = {"sample": record["sample"], "dtype": record["dtype"], "cost": record["cost"], "check": record["check"],
           "d": d_one, "weight_change": weight_change(record["weight_change"], record["n_layers"]),
           "interpolation": interpolation(record, d), "blocks": block_effects(record, d, d_one),
           "logit_lens": logit_lens(table, record), "lens": record["lens"],
           "bisect": [{"name": h["value"], **d[h["column"]]} for h in record["hybrids"] if h["kind"] == "bisect"]}
    out["interaction"] = d_one - sum(b["only"]["d"] for b in out["blocks"])
    out["findings"] = layer_findings(out)
    return out


def weight_change(params: list[dict], n_layers: int) -> dict:
    """‖W_other − W_base‖ / ‖W_base‖ per decoder layer, per kind of matrix, for the parameters outside the layers,
    and overall (from squared norms, which add up); and the parameters left identical."""
    def rel(rows: list[dict]) -> float:
        base = sum(r["base_sq"] for r in rows)
        return math.sqrt(sum(r["diff_sq"] for r in rows) / base) if base > 0 else math.nan

    by_layer = [{"layer": i, "rel_change": rel([p for p in params if p["layer"] == i]),
                 "identical": sum(p["identical"] for p in params if p["layer"] == i),
                 "params": sum(p["layer"] == i for p in params)} for i in range(n_layers)]
    kinds: dict[str, list[dict]] = {}
    for p in params:
        if p["layer"] is not None:
            kinds.setdefault(p["name"].split(f".{p['layer']}.", 1)[1], []).append(p)
    return {"overall": rel(params), "by_layer": by_layer,
            "by_kind": [{"kind": k, "rel_change": rel(rows)} for k, rows in kinds.items()],
            "outside_layers": [{"name": p["name"], "rel_change": rel([p]), "identical": p["identical"]}
                               for p in params if p["layer"] is None],
            "identical": [p["name"] for p in params if p["identical"]], "n_params": len(params)}


def interpolation(record: dict, d: dict) -> dict:
    """D(α) along θ_b + α(θ_o − θ_b): the points, whether the loss moves one way only, and the α of lowest loss."""
    points = [{"alpha": h["value"], **d[h["column"]]} for h in record["hybrids"] if h["kind"] == "alpha"]
    values = [p["d"] for p in points]
    steps = np.diff(values)
    best = min(points, key=lambda p: p["d"])
    return {"points": points, "monotone": bool((steps >= -EQUAL).all() or (steps <= EQUAL).all()),
            "best_alpha": best["alpha"], "best_d": best["d"]}


def block_effects(record: dict, d: dict, d_one: float) -> list[dict]:
    out = []
    for b in record["blocks"]:
        only, kept = d[b["only"]], d[b["kept"]]
        out.append({"name": b["name"], "layers": b["layers"], "numel": b["numel"], "only": only, "kept": kept,
                    "removed": d_one - kept["d"],
                    "share_only": only["d"] / d_one if abs(d_one) > EQUAL else None})
    return out


def logit_lens(table, record: dict) -> list[dict]:
    """Per layer, over the lens's tokens: mean KL(b || o) of the two lenses and each model's lens NLL."""
    n = max(float(table["lens_tokens"].to_numpy().sum()), 1.0)
    rows = []
    for layer in range(record["lens"]["layers"]):
        kl, nb, no = (float(table[f"lens_{k}_{layer}"].to_numpy().sum() / n) for k in ("kl", "nll_b", "nll_o"))
        rows.append({"layer": layer, "kl": kl, "nll_b": nb, "nll_o": no, "d": no - nb})
    return rows


def layer_findings(r: dict) -> list[str]:
    """What the layer attribution says, each sentence worded from its number."""
    d, blocks = r["d"], r["blocks"]
    if shown_as_zero(d):
        return ["The two models score the sample identically (D = 0), so no block carries a difference."]
    out = []
    top = max(blocks, key=lambda b: b["only"]["d"] * np.sign(d))
    out.append(f"Taken alone from the other model, {top['name']} gives D = {top['only']['d']:+.4f} of the whole "
               f"model's {d:+.4f} ({top['only']['d'] / d:.0%} of D); every block alone adds up to "
               f"{d - r['interaction']:+.4f}, so the blocks' effects "
               + ("add up nearly exactly" if abs(r["interaction"]) <= 0.05 * abs(d) else
                  f"interact ({r['interaction']:+.4f} not explained by any block alone)") + ".")
    kept = min(blocks, key=lambda b: abs(b["kept"]["d"]))
    out.append(f"Keeping {kept['name']} from the baseline in the other model moves D the most towards zero: from "
               f"{d:+.4f} to {kept['kept']['d']:+.4f}.")
    out.append(path_finding(r["interpolation"], d))
    if r.get("bisect"):
        halves = "; ".join(f"{h['name']} alone {h['d']:+.4f}" for h in r["bisect"])
        out.append(f"Halving the group of layers that moves D the most: {halves} (of D {d:+.4f}).")
    lens = r["logit_lens"]
    if lens:
        peak = max(lens, key=lambda row: row["kl"])
        where = "at the output" if peak is lens[-1] else f"after layer {peak['layer']}, more than at the output"
        out.append(f"Through the logit lens, KL(b || o) between the two models' predictions is {lens[0]['kl']:.3f} "
                   f"after layer 0 and {lens[-1]['kl']:.3f} at the output; it is largest {where} "
                   f"({peak['kl']:.3f}).")
    return out


def path_finding(path: dict, d: float) -> str:
    """The interpolation path in words: its shape, where the loss is lowest, and the averaged weights."""
    ends = path["points"][-1]["d"] - path["points"][0]["d"]
    shape = ("is not monotone" if not path["monotone"] else "rises monotonically" if ends > 0 else
             "falls monotonically" if ends < 0 else "stays flat")
    half = next((p for p in path["points"] if p["alpha"] == 0.5), None)
    at_half = (f"; the averaged weights (α = 0.5) give D = {half['d']:+.4f}, {half['d'] / d:.0%} of the other "
               "model's" if half is not None else "")
    best = path["best_alpha"]
    where = ("α = 0, the baseline's own weights" if best == 0 else "α = 1, the other model's own weights"
             if best == 1 else f"α = {best:g} (D = {path['best_d']:+.4f}), between the two: a mix of the weights beats "
             "both")
    return f"Along the path from the baseline's weights to the other model's, D {shape}{at_half}; the lowest loss on " \
           f"the sample is at {where}."
