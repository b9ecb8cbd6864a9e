"""The temperature split of D (analysis/temperature.py) from a stored fit: the parts add up to D exactly, D's interval
is the headline's draw, identical models split nothing, and the finding and the table follow their numbers for every
sign of D and of the change."""

from __future__ import annotations

import numpy as np
import pytest

from lossgap.analysis.bootstrap import ratio_interval
from lossgap.analysis.temperature import temperature_sentence, temperature_split
from lossgap.report.mechanisms import temperature_table

SAMPLE = {"rows": 12, "rows_in_corpus": 40, "tokens": 4100, "documents": 9, "token_budget": 4096, "seed": 0,
          "whole": False}


def _stored(base: np.ndarray, other: np.ndarray, gain_b: np.ndarray, gain_o: np.ndarray, n: np.ndarray,
            t_b: float = 1.1, t_o: float = 1.6) -> dict:
    """A temperature file with these per-document NLL sums at T = 1 and gains from the fitted temperatures."""
    model = {"steps": 5, "converged": True, "logits_kept": True, "seconds": 0.1}
    return {"sample": SAMPLE, "seconds": 0.3,
            "models": {"baseline": {"name": "base", "beta": 1 / t_b, "temperature": t_b, **model},
                       "other": {"name": "sft", "beta": 1 / t_o, "temperature": t_o, **model}},
            "documents": {"doc_id": list(range(n.size)), "n_tokens": n.tolist(), "nll_baseline": base.tolist(),
                          "nll_baseline_tempered": (base - gain_b).tolist(), "nll_other": other.tolist(),
                          "nll_other_tempered": (other - gain_o).tolist()}}


def _random(seed: int = 0, docs: int = 9) -> tuple:
    rng = np.random.default_rng(seed)
    n = rng.integers(50, 900, docs).astype(float)
    base = n * rng.uniform(2.0, 3.0, docs)
    other = base + n * rng.normal(0.4, 0.2, docs)
    return base, other, n * rng.uniform(0.0, 0.02, docs), n * rng.uniform(0.05, 0.2, docs), n


def test_the_split_adds_up_to_d_exactly_and_d_has_the_headlines_interval():
    base, other, gain_b, gain_o, n = _random()
    got = temperature_split(_stored(base, other, gain_b, gain_o, n), n_boot=500, seed=7)
    d = (other - base).sum() / n.sum()
    removed = (gain_o - gain_b).sum() / n.sum()
    assert got["d"]["value"] == pytest.approx(d, abs=1e-12)
    assert got["removed"]["value"] == pytest.approx(removed, abs=1e-12)
    assert got["removed"]["value"] + got["d_tempered"]["value"] == pytest.approx(got["d"]["value"], abs=1e-15)
    assert got["d_tempered"]["value"] == pytest.approx(((other - gain_o) - (base - gain_b)).sum() / n.sum(), abs=1e-12)
    assert got["share_removed"] == pytest.approx(removed / d)
    # one draw with the comparison's seed: D's interval is the one the headline computes from the same documents
    assert (got["d"]["ci_low"], got["d"]["ci_high"]) == ratio_interval(other - base, n, 500, 7)
    for key in ("d", "removed", "d_tempered"):
        assert got[key]["ci_low"] < got[key]["value"] < got[key]["ci_high"]
    m = got["models"]["other"]
    assert m["temperature"] == 1.6 and m["nll"] == pytest.approx(other.sum() / n.sum())
    assert m["gain"]["value"] == pytest.approx(gain_o.sum() / n.sum())
    assert got["n_tokens"] == int(n.sum()) and got["n_documents"] == 9
    assert got["sample_text"].startswith(f"a sample of {int(n.sum()):,} scored tokens from 9 documents (12 of 40 rows")


def test_identical_models_split_nothing():
    base, _, gain_b, _, n = _random()
    got = temperature_split(_stored(base, base, gain_b, gain_b, n, 1.1, 1.1), n_boot=200, seed=0)
    assert got["d"]["value"] == got["removed"]["value"] == got["d_tempered"]["value"] == 0
    assert got["share_removed"] is None
    text = temperature_sentence("sft", "base", got)
    assert "the two models' losses are the same (D = +0.0000)" in text and "sharpness accounts" not in text


def _sentence(d: float, removed: float, spread: float = 0.02, docs: int = 9) -> str:
    """The finding for a split with these figures (interval: the value +- spread)."""
    fig = lambda v: {"value": v, "ci_low": v - spread, "ci_high": v + spread}  # noqa: E731
    model = {"temperature": 1.25, "beta": 0.8, "gain": fig(0.03)}
    tp = {"sample_text": "a sample", "n_documents": docs, "d": fig(d), "removed": fig(removed),
          "d_tempered": fig(d - removed), "models": {"baseline": model, "other": model}}
    return temperature_sentence("sft", "base", tp)


def test_the_finding_follows_its_numbers_for_every_sign():
    text = _sentence(0.5, 0.1)
    assert "D on the sample is +0.4000 instead of +0.5000 nats/token (-0.1000, 95% CI -0.1200 to -0.0800)" in text
    assert "sharpness accounts for 20% of D" in text
    assert "the rest of D (+0.4000, 95% CI +0.3800 to +0.4200) is not sharpness" in text
    assert "T = 1.250" in text and "lowers base's NLL by 0.0300" in text
    unclear = _sentence(0.5, 0.01)
    assert "the change (-0.0100, 95% CI -0.0300 to +0.0100) is not shown at the 95% level" in unclear
    assert "accounts" not in unclear
    more = _sentence(0.1, 0.3)
    assert "the gap reverses: at their temperatures sft is better than base, so more than all of D" in more
    assert "close the gap: all of D is sharpness" in _sentence(0.1, 0.1)
    wider = _sentence(0.5, -0.1)
    assert "widen the gap by 20%: no part of it is sharpness" in wider and "accounts" not in wider
    negative = _sentence(-0.4, -0.1)  # sft better; tempering raises D towards 0: the advantage narrows
    assert "-0.3000 instead of -0.4000" in negative and "temperatures take away 25% of the advantage of sft" in negative
    assert "% of D" not in negative
    assert "widen the advantage of sft by 25%" in _sentence(-0.4, 0.1)
    assert "95% CI n/a: 1 document" in _sentence(0.5, 0.1, docs=1)


def test_a_model_no_better_than_chance_is_said_to_be_so():
    """beta = 0 (the uniform distribution is its best; no finite T, null in JSON): the finding says so and draws no
    conclusion about sharpness; the table prints the temperature as infinite."""
    base, other, gain_b, gain_o, n = _random()
    stored = _stored(base, other, gain_b, gain_o, n)
    stored["models"]["other"] |= {"beta": 0.0, "temperature": None}
    got = temperature_split(stored, n_boot=200, seed=0)
    text = temperature_sentence("sft", "base", got)
    assert "sft's with no temperature at all (beta = 0: the uniform distribution)" in text
    assert "sft predicts the uniform distribution: on this sample sft ranks the text's tokens no better" in text
    assert "accounts" not in text and "is not sharpness" not in text
    assert temperature_table("sft", "base", got).rows[1][1].display == "inf (uniform)"


def test_the_table_shows_each_model_and_the_split_with_intervals():
    base, other, gain_b, gain_o, n = _random()
    got = temperature_split(_stored(base, other, gain_b, gain_o, n), n_boot=200, seed=1)
    table = temperature_table("sft", "base", got)
    cells = {row[0].display: [c.display for c in row] for row in table.rows}
    assert cells["base: NLL"][1] == "1.100" and cells["sft: NLL"][1] == "1.600"
    assert cells["sft: NLL"][2] == f"{other.sum() / n.sum():.4f}"
    d_row = cells["D (sft - base)"]
    assert d_row[2] == f"{got['d']['value']:+.4f}" and d_row[4] == f"{got['d_tempered']['value']:+.4f}"
    assert d_row[6] == f"{got['removed']['value']:+.4f}" and d_row[8] == f"{100 * got['share_removed']:.1f}%"
    assert " to " in d_row[3] and " to " in d_row[5] and " to " in d_row[7]
    assert "a sample of" in table.title and table.csv == "temperature.csv"
    one = temperature_split(_stored(base[:1], other[:1], gain_b[:1], gain_o[:1], n[:1]), n_boot=200, seed=1)
    assert temperature_table("sft", "base", one).rows[2][3].display == "n/a (1 document)"
