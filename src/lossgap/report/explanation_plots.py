"""The figures of "Where the difference comes from", drawn from results.json's `explanation` alone (same rules as
plots.py: the Agg canvas, no timestamps, a figure without data is skipped; figures.py lists them)."""

from __future__ import annotations

from matplotlib.figure import Figure

from ..formats.schema import Results, finite
from .plots import new_figure


def _models(results: Results, key: str) -> list[tuple[str, dict]]:
    models = ((results.get("explanation") or {}).get("models") or {}).items()
    return [(name, entry) for name, entry in models if entry.get(key)]


def kl_distribution(results: Results) -> Figure | None:
    """Histogram of per-token KL(baseline || other) on a log scale: is the difference spread over every token or
    concentrated on a few?"""
    models = _models(results, "kl_histogram")
    if not models:
        return None
    fig = new_figure(8.0, 4.0)
    ax = fig.add_subplot()
    for name, entry in models:
        h = entry["kl_histogram"]
        if h.get("counts"):
            ax.stairs(h["counts"], h["edges"], fill=len(models) == 1, alpha=0.6, label=name)
    ax.set_xlabel(f"log10 KL({results['baseline']} || other) per token (nats; floored at 1e-8)")
    ax.set_ylabel("tokens")
    ax.set_title("Per-token KL divergence")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def _contributions(results: Results, dimension: str, title: str) -> Figure | None:
    """Each bucket's contribution to D with its 95% interval, one bar series per other model."""
    series = []
    for name, entry in _models(results, "attribution"):
        dim = entry["attribution"]["dimensions"].get(dimension)
        if dim and dim["buckets"]:
            series.append((name, dim))
    if not series:
        return None
    labels = list(dict.fromkeys(str(b["bucket"]) for _, dim in series for b in dim["buckets"]))
    fig = new_figure(8.5, 4.4)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for k, (name, dim) in enumerate(series):
        by = {str(b["bucket"]): b for b in dim["buckets"]}
        xs = [i + (k - (len(series) - 1) / 2) * width for i, label in enumerate(labels) if label in by]
        bs = [by[label] for label in labels if label in by]
        ys = [b["contribution"] for b in bs]
        lo = [y - b["ci_low"] if finite(b.get("ci_low")) is not None else 0.0 for y, b in zip(ys, bs, strict=True)]
        hi = [b["ci_high"] - y if finite(b.get("ci_high")) is not None else 0.0 for y, b in zip(ys, bs, strict=True)]
        ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=3, label=f"{name}: D = {dim['diff']:+.4f}")
    ax.axhline(0.0, color="0.3", linewidth=1)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel("contribution to D (nats/token)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def text_class_contributions(results: Results) -> Figure | None:
    return _contributions(results, "text_class", "Contributions to D by text class of the target (95% CI)")


def frequency_contributions(results: Results) -> Figure | None:
    return _contributions(results, "frequency", "Contributions to D by frequency of the target (rarest first)")


def delta_by_confidence(results: Results) -> Figure | None:
    return _contributions(results, "confidence", f"Contributions to D by {results['baseline']}'s probability of "
                                                 "the target")


def reliability(results: Results) -> Figure | None:
    """Reliability diagrams: binned top-1 probability against how often the top-1 is the target, per model."""
    models = _models(results, "calibration")
    if not models:
        return None
    fig = new_figure(8.0, 4.2)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="perfectly calibrated")
    drawn = {results["baseline"]: models[0][1]["calibration"]["base"]}
    drawn |= {name: entry["calibration"]["other"] for name, entry in models}
    for name, cal in drawn.items():
        pts = [(b["confidence"], b["accuracy"]) for b in cal["bins"] if b.get("n_tokens")]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"{name} (ECE {cal['ece']:.3f})")
    ax.set_xlabel("top-1 probability (binned)")
    ax.set_ylabel("share where the top-1 is the target")
    ax.set_title("Reliability of the top-1 prediction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig
