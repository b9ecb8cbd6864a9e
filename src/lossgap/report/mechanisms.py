"""The tables of the mechanisms behind the gap (analysis/mechanisms.py), from results.json's
`explanation.models.<other>.mechanisms`: probability on control tokens and D renormalised without them, and what the
other model predicts instead where its top-1 is not the text's token."""

from __future__ import annotations

from dataclasses import replace

from .explanation_tables import contribution_table
from .render import Interval, NumberFormat, Table, Text, count, share, signed
from .tables import ONE_DOCUMENT

percent = NumberFormat(".2f", 100, "%")
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
