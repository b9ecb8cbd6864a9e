"""The section "Which weights carry the gap" (--layers), from results.json's `explanation.models.<other>.layers`
alone: the findings, what was measured on (sample, dtype, passes, the check of the path's ends against the paired
pass), and the tables and figures of the weight change, the interpolation path, the block swaps and the logit lens.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from ..formats.schema import Results
from .plots import new_figure
from .render import Interval, NumberFormat, Section, Table, Text, count, loss, share, signed

relative = NumberFormat(".2f", 100, "%")
kl = NumberFormat(".3f")


def _models(results: Results) -> list[tuple[str, dict]]:
    models = ((results.get("explanation") or {}).get("models") or {}).items()
    return [(name, entry["layers"]) for name, entry in models if entry.get("layers")]


def layers_section(results: Results, figures: list[tuple[str, str]]) -> Section | None:
    """The section, or None when no pair was attributed by layer."""
    models = _models(results)
    if not models:
        return None
    base = results["baseline"]
    sec = Section("Which weights carry the gap", [
        f"Hybrids of {base} and each other model of the same architecture, built inside {base}'s model and scored "
        f"with its plan on a sample of the main configuration's tokens: D of a hybrid is its mean NLL minus "
        f"{base}'s on those tokens, with 95% bootstrap intervals over documents."])
    for name, layers in models:
        sec.paragraphs.append(_measured(name, base, layers))
        sec.bullets.extend(layers["findings"])
        sec.tables += [interpolation_table(name, layers), block_table(name, base, layers),
                       weight_table(name, base, layers), lens_table(name, base, layers)]
    sec.figures = figures
    return sec


def _measured(name: str, base: str, layers: dict) -> str:
    s, cost, check = layers["sample"], layers["cost"], layers["check"]
    sample = ("every scored token" if s["whole"] else
              f"a sample of {s['rows']:,} of {s['rows_in_corpus']:,} rows (seed {s['seed']}, budget "
              f"{s['token_budget']:,} tokens)")
    run, full = cost.get("decoder_layers_run"), cost.get("decoder_layers_without_resuming")
    resumed = (f"; passes whose first layers are one model's started part-way, so the decoder ran {run:,} of "
               f"{full:,} layer passes" if run is not None and full and run < full else "")
    return (f"{name}: {sample}, {s['tokens']:,} tokens of {s['documents']:,} documents, in {layers['dtype']}; "
            f"{cost['forward_passes']} forward passes of {base}'s model and 2 more for the logit lens "
            f"({cost['seconds']:.1f} s{resumed}). The path's ends reproduce the paired pass on the same tokens: "
            f"largest per-token NLL difference {check['max_token_diff_alpha_0']:.2g} at α = 0 and "
            f"{check['max_token_diff_alpha_1']:.2g} at α = 1; D on the sample {layers['d']:+.4f} "
            f"(the paired pass: {check['d_pairs_on_sample']:+.4f}).")


def _ci(d: dict) -> Interval:
    return Interval(d["ci"][0], d["ci"][1])


def interpolation_table(name: str, layers: dict) -> Table:
    path = layers["interpolation"]
    rows, records = [], []
    for p in path["points"]:
        rows.append([Text(f"{p['alpha']:g}"), signed(p["d"]), _ci(p)])
        records.append({"model": name, "alpha": p["alpha"], "d": p["d"], "ci_low": p["ci"][0], "ci_high": p["ci"][1]})
    return Table(["α", "D(α)", "95% CI"], rows, records, "layers_interpolation.csv",
                 f"{name}: D along the weights' path θ_base + α(θ_{name} − θ_base)")


def block_table(name: str, base: str, layers: dict) -> Table:
    d = layers["d"]
    headers = ["Block", "Weights", f"Only this block from {name}: D", "95% CI", "Share of D",
               f"All but this block from {name}: D", "95% CI", "Removed"]
    rows, records = [], []
    for b in layers["blocks"]:
        rows.append([Text(b["name"]), count(b["numel"]), signed(b["only"]["d"]), _ci(b["only"]),
                     share(b["share_only"]), signed(b["kept"]["d"]), _ci(b["kept"]), signed(b["removed"])])
        records.append({"model": name, "block": b["name"], "numel": b["numel"], "only_d": b["only"]["d"],
                        "only_ci_low": b["only"]["ci"][0], "only_ci_high": b["only"]["ci"][1],
                        "kept_d": b["kept"]["d"], "kept_ci_low": b["kept"]["ci"][0],
                        "kept_ci_high": b["kept"]["ci"][1], "removed": b["removed"]})
    rows.append([Text("sum of the blocks alone"), count(sum(b["numel"] for b in layers["blocks"])),
                 signed(d - layers["interaction"]), Interval(None, None), share(1 - layers["interaction"] / d if d
                                                                                else None),
                 Text(""), Interval(None, None), Text("")])
    whole = next(p for p in layers["interpolation"]["points"] if p["alpha"] == 1)
    rows.append([Text(f"all of {name}"), Text(""), signed(d), _ci(whole), share(1.0 if d else None),
                 Text(""), Interval(None, None), Text("")])
    for h in layers.get("bisect") or []:
        rows.append([Text(f"bisected: {h['name']}"), Text(""), signed(h["d"]), _ci(h),
                     share(h["d"] / d if d else None), Text(""), Interval(None, None), Text("")])
        records.append({"model": name, "block": f"bisected: {h['name']}", "only_d": h["d"],
                        "only_ci_low": h["ci"][0], "only_ci_high": h["ci"][1]})
    return Table(headers, rows, records, "layers_blocks.csv",
                 f"{name}: D with one block swapped ({base} elsewhere), and with one block kept from {base} "
                 f"({name} elsewhere); Removed = D − the second")


def weight_table(name: str, base: str, layers: dict) -> Table:
    w = layers["weight_change"]
    rows, records = [], []
    for p in w["outside_layers"]:
        rows.append([Text(p["name"]), relative(p["rel_change"]), Text("yes" if p["identical"] else "no")])
        records.append({"model": name, "part": p["name"], "rel_change": p["rel_change"], "identical": p["identical"]})
    for r in w["by_layer"]:
        rows.append([Text(f"layer {r['layer']}"), relative(r["rel_change"]),
                     Text(f"{r['identical']} of {r['params']}")])
        records.append({"model": name, "part": f"layer {r['layer']}", "rel_change": r["rel_change"],
                        "identical": r["identical"]})
    rows.append([Text("all weights"), relative(w["overall"]), Text(f"{len(w['identical'])} of {w['n_params']}")])
    return Table(["Part", f"‖W_{name} − W_{base}‖ / ‖W_{base}‖", "Identical"], rows, records,
                 "layers_weight_change.csv", f"{name}: how far its weights moved from {base}'s")


def lens_table(name: str, base: str, layers: dict) -> Table:
    rows, records = [], []
    for r in layers["logit_lens"]:
        rows.append([Text(f"after layer {r['layer']}"), kl(r["kl"]), loss(r["nll_b"]), loss(r["nll_o"]),
                     signed(r["d"])])
        records.append({"model": name, **r})
    return Table(["Lens", f"KL({base} || {name})", f"{base} NLL", f"{name} NLL", "Difference"], rows, records,
                 "layers_logit_lens.csv",
                 f"{name}: the logit lens (each layer's output through its model's final norm and head) on the "
                 f"sample's first {layers['lens']['tokens']:,} tokens")


def interpolation_figure(results: Results) -> Figure | None:
    """D(α) along the weights' path with its intervals, one line per other model."""
    models = _models(results)
    if not models:
        return None
    fig = new_figure(6.5, 4.0)
    ax = fig.add_subplot()
    for name, layers in models:
        pts = layers["interpolation"]["points"]
        x = [p["alpha"] for p in pts]
        ax.errorbar(x, [p["d"] for p in pts], yerr=[[p["d"] - p["ci"][0] for p in pts],
                                                      [p["ci"][1] - p["d"] for p in pts]],
                    marker="o", capsize=3, label=name)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"α (0: {results['baseline']}, 1: the other model)")
    ax.set_ylabel("D(α), nats per token")
    ax.set_title("Loss along the path between the two weight sets")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def layer_figure(results: Results) -> Figure | None:
    """Per decoder layer: the relative weight change and the logit lens's KL, one panel each."""
    models = _models(results)
    if not models:
        return None
    fig = new_figure(8.0, 3.6)
    left, right = fig.subplots(1, 2)
    for name, layers in models:
        by_layer = layers["weight_change"]["by_layer"]
        left.plot([r["layer"] for r in by_layer], [100 * r["rel_change"] for r in by_layer], marker="o", label=name)
        lens = layers["logit_lens"]
        right.plot([r["layer"] for r in lens], [r["kl"] for r in lens], marker="o", label=name)
    left.set_xlabel("decoder layer")
    left.set_ylabel("relative weight change (%)")
    left.set_title("How far each layer's weights moved")
    right.set_xlabel("decoder layer (logit lens)")
    right.set_ylabel(f"KL({results['baseline']} || other), nats")
    right.set_title("Where the predictions part")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig
