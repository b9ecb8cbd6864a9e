"""The report's figures with names from the input: "$" in a domain or model name is a character, never mathtext."""

from __future__ import annotations

import json

import pytest

from lossgap.report import plots
from lossgap.report.build import write_report
from tests.results_example import make_results

MATHTEXT = (r"$\undefinedmacro{x}$", "costs_$HOME_$", "Price: $5 - $10", r"$\frac{1}{2}$ \$ $")


def _renamed(results: dict, names: dict[str, str]) -> dict:
    """The results with models and domains renamed everywhere they are keys or values."""
    text = json.dumps(results)
    for old, new in names.items():
        text = text.replace(json.dumps(old), json.dumps(new))
    return json.loads(text)


@pytest.mark.parametrize("name", MATHTEXT)
def test_every_figure_draws_a_name_with_dollar_signs(tmp_path, name):
    """The name of a domain (tick labels) and of the other model (legend entries): every figure is drawn, where
    matplotlib's mathtext used to raise after all the scoring."""
    results = _renamed(make_results(), {"Github": name, "instruct": f"{name} instruct"})
    written = {p.name for p in write_report(tmp_path, results)}
    assert {"per_domain_difference.png", "nll_by_position.png", "leakage_by_position.png",
            "doc_difference_histogram.png"} <= written


def _tick_label(fig, text: str):
    fig.canvas.draw()
    (label,) = [t for ax in fig.axes for t in ax.get_yticklabels() if t.get_text() == text]
    return label


def test_dollar_signs_are_drawn_as_written():
    """"Price: $5 - $10" drawn as the 15 characters it holds: the tick label is as wide as the same string drawn with
    mathtext off, and not as wide as mathtext draws it."""
    name = "Price: $5 - $10"
    results = _renamed(make_results(), {"Github": name})
    fig = plots.plain_text(plots.per_domain_difference(results))
    label = _tick_label(fig, name)
    renderer = fig.canvas.get_renderer()
    width = label.get_window_extent(renderer).width
    as_text = fig.text(0, 0, name, fontproperties=label.get_fontproperties(), parse_math=False)
    as_math = fig.text(0, 0, name, fontproperties=label.get_fontproperties(), parse_math=True)
    assert width == pytest.approx(as_text.get_window_extent(renderer).width, abs=0.5)
    assert abs(width - as_math.get_window_extent(renderer).width) > 3
