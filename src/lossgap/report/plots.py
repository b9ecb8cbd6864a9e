"""The report's main figures, drawn from results.json alone, and the rules every figure follows (figures.py lists
them all).

Figures are built on the Agg canvas directly (no pyplot), so drawing never touches global GUI state, and are
saved without a timestamp or version stamp, so the same results give byte-identical PNGs. Every text is drawn as
the characters it holds, never as mathtext or LaTeX (plain_text): labels hold names from the input. A figure whose data
is empty (no leakage pair, no second model) is skipped: the function returns None.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from ..formats.files import atomic_path
from ..formats.schema import ALL_POSITIONS, Results, bucket_order, finite, main_row, others, unit

DPI = 110
PNG_METADATA = {"Software": None}  # no matplotlib version in the file: same results, same bytes


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def per_domain_difference(results: Results) -> Figure | None:
    """Difference (other - baseline) per domain with its 95% bootstrap interval, on the main configuration."""
    row = main_row(results)
    if row is None:
        return None
    series = []
    for name in others(results):
        per_domain = row["comparisons"].get(name, {}).get("per_domain", {})
        pts = [(d, c["diff"], c.get("ci_low"), c.get("ci_high")) for d, c in per_domain.items()
               if finite(c["diff"]) is not None]
        if pts:
            series.append((name, pts))
    if not series:
        return None
    domains = sorted({d for _, pts in series for d, *_ in pts})
    fig = new_figure(8.0, max(3.0, 1.6 + 0.42 * len(domains) * max(1.0, 0.6 * len(series))))
    ax = fig.add_subplot()
    step = 0.7 / len(series)
    for k, (name, pts) in enumerate(series):
        y = [domains.index(d) + (k - (len(series) - 1) / 2) * step for d, *_ in pts]
        x = [diff for _, diff, _, _ in pts]
        lo = [diff - lo if finite(lo) is not None else 0.0 for _, diff, lo, _ in pts]
        hi = [hi - diff if finite(hi) is not None else 0.0 for _, diff, _, hi in pts]
        ax.errorbar(x, y, xerr=[lo, hi], fmt="o", capsize=4, label=f"{name} - {results['baseline']}")
    ax.axvline(0.0, color="0.3", linewidth=1, linestyle="--")
    ax.set_yticks(range(len(domains)), domains)
    ax.invert_yaxis()
    ax.set_xlabel(f"difference in mean loss ({unit(results)}); > 0: worse than {results['baseline']}")
    ax.set_title(f"Difference by domain, {row['key']} (95% bootstrap CI)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig


def nll_by_position(results: Results) -> Figure | None:
    """Mean NLL by position of the target within its document, one line per model."""
    profile = results.get("position_profile") or {}
    models = {n: [b for b in rows if finite(b.get("mean_nll")) is not None]
              for n, rows in (profile.get("models") or {}).items()}
    models = {n: rows for n, rows in models.items() if rows}
    if not models:
        return None
    labels = bucket_order(rows for rows in models.values())
    fig = new_figure(8.5, 4.6)
    ax = fig.add_subplot()
    for name, rows in models.items():
        ax.plot([labels.index(b["bucket"]) for b in rows], [b["mean_nll"] for b in rows], marker="o", label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_xlabel("target position within its document (buckets double in width)")
    ax.set_ylabel("mean NLL (nats/token)")
    ax.set_title(f"Mean NLL by position, {profile.get('configuration', '')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def leakage_by_position(results: Results) -> Figure | None:
    """Causal - block NLL of the same tokens by position (next-token pair if present), with the token share."""
    pairs = results.get("leakage") or []
    leak = next((p for p in pairs if p.get("label_offset") == 1), pairs[0] if pairs else None)
    if leak is None:
        return None
    models = {n: [b for b in rows if b["bucket"] != ALL_POSITIONS] for n, rows in leak["models"].items()}
    models = {n: rows for n, rows in models.items() if rows}
    if not models:
        return None
    labels = bucket_order(models.values())
    fig = new_figure(8.5, 4.8)
    ax = fig.add_subplot()
    share_ax = ax.twinx()
    first = next(iter(models.values()))
    shares = [100 * b["share_tokens"] if finite(b.get("share_tokens")) is not None else 0.0 for b in first]
    share_ax.bar([labels.index(b["bucket"]) for b in first], shares, color="0.85", width=0.7, label="share of tokens")
    share_ax.set_ylim(0, 1.6 * max(max(shares), 1.0))  # bars in the lower part, room for the legend above
    share_ax.set_ylabel("share of scored tokens (%)", color="0.4")
    share_ax.tick_params(axis="y", colors="0.4")
    ax.set_zorder(share_ax.get_zorder() + 1)  # lines above the bars
    ax.patch.set_visible(False)
    for name, rows in models.items():
        pts = [(labels.index(b["bucket"]), b["mean_diff"]) for b in rows if finite(b.get("mean_diff")) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.axhline(0.0, color="0.3", linewidth=1, linestyle="--")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_xlabel("target position within its document")
    ax.set_ylabel("mean NLL, causal - block (nats/token)")
    ax.set_title(f"Cross-document leakage by position: {leak['causal']} - {leak['block']}")
    ax.grid(alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    bars, bar_names = share_ax.get_legend_handles_labels()
    ax.legend(handles + bars, names + bar_names, fontsize="small", loc="upper right")
    return fig


def doc_difference_histogram(results: Results) -> Figure | None:
    """Distribution of per-document differences (other - baseline) on the main configuration."""
    hist = (results.get("doc_difference_histogram") or {}).get("models") or {}
    hist = {n: h for n, h in hist.items() if h.get("counts") and len(h["edges"]) == len(h["counts"]) + 1}
    if not hist:
        return None
    fig = new_figure(8.0, 4.2)
    ax = fig.add_subplot()
    for name, h in hist.items():
        single = len(hist) == 1  # one model: filled bars; several: outlines that stay readable when they overlap
        ax.stairs(h["counts"], h["edges"], fill=single, alpha=0.6 if single else 1.0, linewidth=1 if single else 2,
                  label=f"{name} - {results['baseline']}")
    ax.axvline(0.0, color="0.3", linewidth=1, linestyle="--")
    ax.set_xlabel(f"per-document mean loss difference ({unit(results)}); > 0: worse than {results['baseline']}")
    ax.set_ylabel("documents")
    ax.set_title(f"Per-document differences, {results['doc_difference_histogram'].get('configuration', '')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plain_text(fig: Figure) -> Figure:
    """Every text of the figure (labels, tick labels, titles, legend entries) as plain text: domain and model names
    come from the input, and matplotlib would parse "$...$" in them as mathtext (an unknown macro is a crash after
    all the scoring; "Price: $5 - $10" is drawn as math) or hand them to LaTeX where text.usetex is set."""
    for text in fig.findobj(Text):
        text.set_parse_math(False)
        text.set_usetex(False)
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    """The figure as a PNG under its final name only when complete; the same figure gives the same bytes. Its texts
    are drawn as plain text (plain_text)."""
    plain_text(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata=PNG_METADATA)
    return path
