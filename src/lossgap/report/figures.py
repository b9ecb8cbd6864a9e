"""Every figure of the report, declared once: its file, the function that draws it from results.json, its caption
(the image's alt text, and its caption in Markdown) and the section it belongs to. A figure whose data is empty is
skipped: no file, and no caption in its section.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from ..formats.schema import Results
from . import explanation_plots, layers, plots

STATISTICS, DOMAINS, LEAKAGE, POSITIONS, EXPLANATION = "statistics", "domains", "leakage", "positions", "explanation"
LAYERS = "layers"


@dataclass(frozen=True)
class ReportFigure:
    file: str
    draw: Callable[[Results], Figure | None]
    caption: str
    section: str


FIGURES: tuple[ReportFigure, ...] = (
    ReportFigure("per_domain_difference.png", plots.per_domain_difference,
                 "Difference in loss per domain (other model minus baseline) with 95% bootstrap intervals and a zero "
                 "line", DOMAINS),
    ReportFigure("nll_by_position.png", plots.nll_by_position,
                 "Mean NLL by position of the target within its document, one line per model", POSITIONS),
    ReportFigure("leakage_by_position.png", plots.leakage_by_position,
                 "Mean NLL under the causal mask minus the block mask by position, with the share of tokens per "
                 "position as bars", LEAKAGE),
    ReportFigure("doc_difference_histogram.png", plots.doc_difference_histogram,
                 "Histogram of per-document differences in mean loss", STATISTICS),
    ReportFigure("kl_distribution.png", explanation_plots.kl_distribution,
                 "Histogram of per-token KL divergence between the baseline and each other model", EXPLANATION),
    ReportFigure("contributions_text_class.png", explanation_plots.text_class_contributions,
                 "Contribution of each text class of the target to the difference D, with 95% bootstrap intervals",
                 EXPLANATION),
    ReportFigure("contributions_frequency.png", explanation_plots.frequency_contributions,
                 "Contribution to D by how frequent the target is in the scored corpus", EXPLANATION),
    ReportFigure("delta_by_confidence.png", explanation_plots.delta_by_confidence,
                 "Contribution to D by the baseline's probability of the target", EXPLANATION),
    ReportFigure("reliability.png", explanation_plots.reliability,
                 "Reliability diagrams: top-1 probability against top-1 accuracy, per model", EXPLANATION),
    ReportFigure("layers_interpolation.png", layers.interpolation_figure,
                 "D along the path between the two weight sets, with 95% bootstrap intervals", LAYERS),
    ReportFigure("layers_by_depth.png", layers.layer_figure,
                 "Per decoder layer: relative weight change, and the logit lens's KL between the two models", LAYERS),
)


def write_figures(out: Path, results: Results) -> dict[str, Path | None]:
    """Draw every figure into `out`; a skipped figure maps to None and any stale file of that name is removed."""
    written: dict[str, Path | None] = {}
    for figure in FIGURES:
        path = Path(out) / figure.file
        fig = figure.draw(results)
        if fig is None:
            path.unlink(missing_ok=True)
            written[figure.file] = None
        else:
            written[figure.file] = plots.save_png(fig, path)
    return written


def drawn(section: str, written: dict[str, Path | None]) -> list[tuple[str, str]]:
    """(file, caption) of the section's figures that were drawn, in order."""
    return [(f.file, f.caption) for f in FIGURES if f.section == section and written.get(f.file)]
