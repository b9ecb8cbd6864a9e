"""The tables of the mechanisms behind the gap (analysis/mechanisms.py), from results.json's
`explanation.models.<other>.mechanisms`: probability on control tokens and D renormalised without them, token shift,
the temperature split of D, and what the other model predicts instead where its top-1 is not the text's token; and
what the paired pass measured on (its dtype and float32 check, the tokens predicted without their whole document)."""

from __future__ import annotations

from dataclasses import replace

from .explanation_tables import contribution_table
from .render import Interval, Number, NumberFormat, Table, Text, count, loss, share, signed
from .tables import ONE_DOCUMENT

percent = NumberFormat(".2f", 100, "%")
small = NumberFormat(".3g")
temperature = NumberFormat(".3f")
INSTEAD = {  # results key -> what the buckets are
    "by_prediction": "what it predicts instead where its top-1 is not the text's token",
    "by_class": "the text class of its top-1 where that is not the text's token",
    "by_pair": "the text's token -> its top-1, where they differ",
}


def mechanism_tables(name: str, base: str, mech: dict | None) -> list[Table]:
    """The special-mass table (overall and per domain) and the three `instead` splits of D."""
    if not mech:
        return []
    tables = []
    if mech.get("special_mass"):
        tables.append(special_mass_table(name, base, mech["special_mass"]))
    if mech.get("shifted"):
        table = contribution_table(name, "shifted", mech["shifted"])
        title = f"{name}: D by token shift ({base}'s rank of {name}'s top-1: 1st unshifted, 2nd-3rd marginal, lower)"
        tables.append(replace(table, csv="shifted.csv", title=title))
        tables.append(shift_share_table(name, mech["shifted"]))
    if mech.get("temperature"):
        tables.append(temperature_table(name, base, mech["temperature"]))
    for key, title in INSTEAD.items():
        result = (mech.get("instead") or {}).get(key)
        if result:
            table = contribution_table(name, f"instead_{key}", result)
            tables.append(replace(table, csv="instead.csv", title=f"{name}: D by {title}"))
    return tables


def special_mass_table(name: str, base: str, sm: dict) -> Table:
    """Each model's probability on control tokens where the target is text, and D renormalised without them."""
    headers = ["Where", "Tokens", f"{base}: mean p(control)", f"{name}: mean p(control)", "D",
               "D renormalised", "Change", "95% CI", "Share of D"]
    removed = sm["removed"]
    o, b = sm["models"]["o"], sm["models"]["b"]
    rows = [[Text("all"), count(sm["n_tokens"]), percent(b["mean_p_special"]["value"]),
             percent(o["mean_p_special"]["value"]), signed(sm["d"]), signed(sm["d_renormalised"]),
             signed(-removed["value"]), Interval(-removed["ci_high"], -removed["ci_low"]),
             share(_share(removed["value"], sm["d"]))]]
    records = [{"model": name, "where": "all", "n_tokens": sm["n_tokens"], "d": sm["d"],
                "d_renormalised": sm["d_renormalised"], "change": -removed["value"],
                "change_ci_low": -removed["ci_high"], "change_ci_high": -removed["ci_low"],
                "mean_p_special_base": b["mean_p_special"]["value"],
                "mean_p_special_other": o["mean_p_special"]["value"]}]
    for where, d in sorted(sm["per_domain"].items()):
        rows.append([Text(where), count(d["n_tokens"]), percent(d["mean_p_special_b"]), percent(d["mean_p_special_o"]),
                     signed(d["d"]), signed(d["d"] - d["removed"]), signed(-d["removed"]),
                     _interval(d.get("removed_ci")), share(_share(d["removed"], d["d"]))])
        records.append({"model": name, "where": where, **d})
    tokens = ", ".join(t for t in sm["special_tokens"] if t) or f"{len(sm['special_ids'])} control tokens"
    return Table(headers, rows, records, "special_mass.csv",
                 title=f"{name}: probability on control tokens ({tokens}) where the text's token is not one, and D "
                       "with both distributions renormalised without them")


def temperature_table(name: str, base: str, tp: dict) -> Table:
    """Each model's fitted temperature and NLL at T = 1 and at it; D at both and the part the temperatures remove."""
    headers = ["", "Fitted T", "At T = 1", "95% CI", "At the fitted T", "95% CI", "Removed by the temperature",
               "95% CI", "Share of D removed"]
    blank = Text("")
    rows: list = []
    records = []
    for role, label in (("baseline", base), ("other", name)):
        m = tp["models"][role]
        fitted = Number(m["temperature"], temperature, absent="inf (uniform)")  # beta = 0: no finite T
        rows.append([Text(f"{label}: NLL"), fitted, loss(m["nll"]), blank,
                     loss(m["nll_tempered"]), blank, signed(m["gain"]["value"]), _figure_ci(tp, m["gain"]), blank])
        records.append({"model": name, "row": label, "temperature": m["temperature"], "at_t1": m["nll"],
                        "at_fitted_t": m["nll_tempered"], "removed": m["gain"]["value"],
                        "removed_ci_low": m["gain"]["ci_low"], "removed_ci_high": m["gain"]["ci_high"]})
    d, rest, removed = tp["d"], tp["d_tempered"], tp["removed"]
    rows.append([Text(f"D ({name} - {base})"), blank, signed(d["value"]), _figure_ci(tp, d), signed(rest["value"]),
                 _figure_ci(tp, rest), signed(removed["value"]), _figure_ci(tp, removed), share(tp["share_removed"])])
    records.append({"model": name, "row": "D", "at_t1": d["value"], "at_t1_ci_low": d["ci_low"],
                    "at_t1_ci_high": d["ci_high"], "at_fitted_t": rest["value"], "at_fitted_t_ci_low": rest["ci_low"],
                    "at_fitted_t_ci_high": rest["ci_high"], "removed": removed["value"],
                    "removed_ci_low": removed["ci_low"], "removed_ci_high": removed["ci_high"],
                    "share_removed": tp["share_removed"]})
    return Table(headers, rows, records, "temperature.csv",
                 title=f"{name}: how much of D is sharpness: each model at the temperature that minimises its NLL "
                       f"(D at the fitted T is the rest, which no temperature removes), on {tp['sample_text']}")


def _figure_ci(tp: dict, figure: dict) -> Interval:
    if tp["n_documents"] == 1:
        return Interval(None, None, absent=ONE_DOCUMENT)
    return Interval(figure["ci_low"], figure["ci_high"])


def _share(removed: float, d: float) -> float | None:
    """The part of a positive D that renormalising removes; none for D <= 0 (a share of nothing, or of a gain)."""
    return removed / d if d > 0 else None


def _interval(removed_ci: list[float] | None) -> Interval:
    """The change's interval (the negated removal's); a domain of one document has none."""
    if removed_ci is None:
        return Interval(None, None, absent=ONE_DOCUMENT)
    return Interval(-removed_ci[1], -removed_ci[0])


def shift_share_table(name: str, sh: dict) -> Table:
    """The share of tokens of each kind of shift, by domain and by the target's position."""
    kinds = ("unshifted", "marginal", "shifted")
    headers = ["Where", "Tokens", *(k.capitalize() for k in kinds)]
    rows: list = []
    records = []
    for group, title in (("by_domain", "domain"), ("by_position", "position")):
        rows.append(f"by {title}")
        for where, d in sh[group].items():
            rows.append([Text(where), count(d["n_tokens"]), *(share(d[k]) for k in kinds)])
            records.append({"model": name, "by": title, "where": where, **d})
    return Table(headers, rows, records, "shifted_shares.csv", title=f"{name}: token shift by domain and position")


def paired_pass_text(name: str, base: str, paired: dict) -> str:
    """The dtype the paired pass ran in and how far that moved its statistics from float32."""
    dtypes = paired.get("dtype") or {}
    ran = " / ".join(dict.fromkeys(str(d) for d in dtypes.values())) or "an unrecorded dtype"
    text = f"The paired pass of {base} and {name} ran in {ran}"
    if paired.get("fp32_check_text"):  # worded by analysis/precision.py
        return text + f"; its float32 check: {paired['fp32_check_text']}."
    if set(dtypes.values()) == {"float32"}:
        return text + " (no float32 check needed)."
    return text + "; it has no float32 check (turned off, or out of memory)."


def truncation_text(tr: dict) -> str:
    return (f"{tr['truncated_tokens']:,} of {tr['n_tokens']:,} scored tokens ({tr['share_truncated']:.1%}) were "
            "predicted without their whole document (it was cut at a row edge): the table gives the main figures over "
            "the tokens with their whole context and over the truncated ones apart.")


def truncation_table(name: str, base: str, tr: dict) -> Table:
    """D, mean KL and same top-1 over the tokens with their whole document as context and over the truncated ones."""
    headers = ["Tokens", "Count", "Documents", "D", "95% CI", f"Mean KL({base}||{name})", "95% CI", "Same top-1",
               "95% CI"]
    rows: list = []
    records = []
    for label, title in (("whole_context", "whole document as context"), ("truncated", "truncated context")):
        f = tr[label]
        if not f["n_tokens"]:
            continue
        rows.append([Text(title), count(f["n_tokens"]), count(f["n_documents"]), signed(f["d"]["value"]),
                     _ci(f, "d", signed), small(f["kl_bo"]["value"]), _ci(f, "kl_bo", small),
                     share(f["same_top1"]["value"]), _ci(f, "same_top1", share)])
        records.append({"model": name, "tokens": label, "n_tokens": f["n_tokens"], "n_documents": f["n_documents"],
                        **{f"{k}_{x}": f[k][x] for k in ("d", "kl_bo", "same_top1") for x in ("value", "ci_low",
                                                                                               "ci_high")}})
    return Table(headers, rows, records, "truncation.csv", title=f"{name} against {base}: whole and truncated context")


def _ci(figures: dict, key: str, fmt: NumberFormat) -> Interval:
    if figures["n_documents"] == 1:
        return Interval(None, None, fmt, absent=ONE_DOCUMENT)
    return Interval(figures[key]["ci_low"], figures[key]["ci_high"], fmt)


def chat_turns_table(name: str, turns: dict, over: str = "") -> Table:
    """The chat format's change of D after each sampled user turn, on the same tokens (`over` says which, when they
    are not all of them: --chat-end-of-turn leaves out the final targets)."""
    headers = ["User turn", "Tokens", "Raw D", "Chat-formatted D", "Change (chat - raw)", "95% CI"]
    rows: list = []
    records = []
    for p in turns["per_turn"]:
        low, high = p["reduction_ci"]
        rows.append([Text(repr(p["turn"])), count(p.get("n_tokens")), signed(p["raw_diff"]), signed(p["chat_diff"]),
                     signed(-p["reduction"]), Interval(None if high is None else -high, None if low is None else -low)])
        records.append({"model": name, **{k: v for k, v in p.items() if k != "reduction_ci"},
                        "reduction_ci_low": low, "reduction_ci_high": high})
    rows.append([Text(f"spread over {len(turns['per_turn'])} turns"), Text(""), Text(""), Text(""),
                 signed(turns["change_mean"]), Text(f"{signed.text(turns['change_min'])} to "
                                                    f"{signed.text(turns['change_max'])} (min to max)")])
    return Table(headers, rows, records, "chat_turns.csv",
                 title=f"{name}: the chat format's change by user turn{over}")
