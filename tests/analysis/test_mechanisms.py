"""The mechanisms behind the gap (analysis/mechanisms.py) against an independent float64 computation: a tiny pair
scored by the paired pass, each document alone (none cut), every token recomputed with full float64 softmax."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from lossgap.analysis.mechanisms import ANY_OTHER, TARGET_ITSELF, instead, special_mass
from lossgap.analysis.textclass import vocab_table
from lossgap.config import CorpusConfig, LayoutConfig, ModelConfig, RunConfig, ScoreConfig
from lossgap.engine.model import load_model
from lossgap.formats.columns import stored_names
from lossgap.formats.paths import ComparisonFolder
from lossgap.run.paired import paired_pass
from tests.helpers import write_jsonl


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_models, tokenizer, pile_records):
    """The paired pass of llama (base) and qwen2 over short documents, each alone, and the float64 reference."""
    root = tmp_path_factory.mktemp("mechanisms")
    corpus = write_jsonl(root / "docs.jsonl", pile_records[:10])
    cfg = ScoreConfig(model=ModelConfig("pair", dtype="float32", device="cpu"), corpus=CorpusConfig(str(corpus)),
                      layout=LayoutConfig("single", 256, None, "causal"),
                      run=RunConfig(str(root / "work"), batch_size=2, quiet=True))
    loaded = [load_model(ModelConfig(str(tiny_models[a]), dtype="float32", device="cpu"), quiet=True)
              for a in ("llama", "qwen2")]
    result = paired_pass(cfg, ("base", "other"), *loaded, loaded[0].tokenizer, ComparisonFolder(root))
    table = pq.read_table(result.path)
    tokens = {role: table.column(name).to_numpy() for role, name in stored_names("base", "other").items()
              if role not in ("domain", "truncated")}
    assert not table.column("truncated").to_numpy().any()
    special = result.facts["special_ids"]
    # float64: every document alone through both models, full log-softmax over the vocabulary
    ref = {"logp_b": [], "logp_o": [], "target": []}
    models = {r: AutoModelForCausalLM.from_pretrained(tiny_models[a], dtype=torch.float64).eval()
              for r, a in (("b", "llama"), ("o", "qwen2"))}
    for doc in np.unique(tokens["doc_id"]):
        text = pile_records[int(doc)]["text"]
        ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id]
        for role, model in models.items():
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, :-1]
            ref[f"logp_{role}"].append(torch.log_softmax(logits, -1).numpy())
        ref["target"].append(np.array(ids[1:]))
    ref = {k: np.concatenate(v) for k, v in ref.items()}
    assert (ref["target"] == tokens["target"]).all()
    domains = dict.fromkeys(np.unique(tokens["doc_id"]).tolist(), "one")
    return tokens, special, ref, vocab_table(tokenizer, len(tokenizer)), domains


def test_special_mass_and_the_renormalised_difference_equal_float64(pair):
    tokens, special, ref, vocab, domains = pair
    got = special_mass(tokens, vocab, domains, special, n_boot=200, seed=0)
    text = ~np.isin(ref["target"], special)
    n = ref["target"].size
    rows = np.arange(n)
    nll = {r: -ref[f"logp_{r}"][rows, ref["target"]] for r in ("b", "o")}
    p_special = {r: np.exp(ref[f"logp_{r}"][:, special]).sum(1) for r in ("b", "o")}
    for r in ("b", "o"):
        assert got["models"][r]["mean_p_special"]["value"] == pytest.approx(p_special[r][text].mean(), abs=1e-6)
        low, high = got["models"][r]["mean_p_special"]["ci_low"], got["models"][r]["mean_p_special"]["ci_high"]
        assert low <= got["models"][r]["mean_p_special"]["value"] <= high
    # each model renormalised without the control tokens: p(target) / (1 - p_special) on text targets
    renorm = {r: np.where(text, nll[r] + np.log1p(-p_special[r]), nll[r]) for r in ("b", "o")}
    d = (nll["o"] - nll["b"]).mean()
    d_renorm = (renorm["o"] - renorm["b"]).mean()
    assert got["d"] == pytest.approx(d, abs=1e-6)
    assert got["d_renormalised"] == pytest.approx(d_renorm, abs=1e-6)
    assert got["removed"]["value"] == pytest.approx(d - d_renorm, abs=1e-6)
    assert got["share_of_d"] == pytest.approx((d - d_renorm) / d, rel=1e-4)
    assert got["per_domain"]["one"]["removed"] == pytest.approx(d - d_renorm, abs=1e-6)
    assert got["text_tokens"] == int(text.sum()) and got["text_tokens"] < n  # EOS targets are control tokens


def test_instead_splits_d_by_the_other_models_prediction_exactly(pair):
    tokens, _, ref, vocab, _ = pair
    got = instead(tokens, vocab, n_boot=200, seed=0, k=3)
    n = ref["target"].size
    rows = np.arange(n)
    delta = ref["logp_b"][rows, ref["target"]] - ref["logp_o"][rows, ref["target"]]
    top = ref["logp_o"].argmax(1)
    wrong = top != ref["target"]
    by = got["by_prediction"]
    assert by["diff"] == pytest.approx(delta.mean(), abs=1e-6)
    assert sum(b["contribution"] for b in by["buckets"]) == pytest.approx(by["diff"], abs=1e-9)
    named = [b for b in by["buckets"] if "key" in b]
    assert len(named) == 3
    sums = {t: delta[wrong & (top == t)].sum() for t in np.unique(top[wrong])}
    expected = sorted(sums, key=lambda t: -sums[t])[:3]
    assert [b["key"] for b in named] == expected  # the three predictions with the largest summed Δ, in order
    for b in named:
        assert b["n_tokens"] == int((wrong & (top == b["key"])).sum())
        assert b["contribution"] == pytest.approx(sums[b["key"]] / n, abs=1e-6)
    itself = next(b for b in by["buckets"] if b["bucket"] == TARGET_ITSELF)
    assert itself["n_tokens"] == int((~wrong).sum())
    assert itself["contribution"] == pytest.approx(delta[~wrong].sum() / n, abs=1e-6)
    assert any(b["bucket"] == ANY_OTHER for b in by["buckets"])
    pairs = got["by_pair"]
    assert sum(b["contribution"] for b in pairs["buckets"]) == pytest.approx(by["diff"], abs=1e-9)
    first = next(b for b in pairs["buckets"] if "key" in b)
    target, predicted = divmod(first["key"], vocab.num_rows)
    assert first["n_tokens"] == int((wrong & (ref["target"] == target) & (top == predicted)).sum())
    assert sum(b["contribution"] for b in got["by_class"]["buckets"]) == pytest.approx(by["diff"], abs=1e-9)
    assert got["wrong_share"] == pytest.approx(wrong.mean())


def _special(d: float, removed: float, low: float, high: float) -> dict:
    """A special_mass result with the given D and removal (interval of the removal), two domains."""
    model = {"mean_p_special": {"value": 0.03, "ci_low": 0.02, "ci_high": 0.05}, "top1_special_share": 0.048}
    return {"special_ids": [0, 2], "special_tokens": ["<|endoftext|>", "<|im_end|>"], "text_tokens": 90,
            "n_tokens": 100,
            "models": {"b": {**model, "mean_p_special": {"value": 0.002, "ci_low": 0.001, "ci_high": 0.003}},
                       "o": model},
            "d": d, "removed": {"value": removed, "ci_low": low, "ci_high": high}, "d_renormalised": d - removed,
            "share_of_d": removed / d if d else float("nan"),
            "per_domain": {"Math": {"n_tokens": 40, "n_documents": 3, "d": 2 * d, "removed": 2 * removed,
                                    "removed_ci": [low, high], "mean_p_special_b": 0.004, "mean_p_special_o": 0.07},
                           "Code": {"n_tokens": 60, "n_documents": 1, "d": d / 3, "removed": removed / 3,
                                    "removed_ci": None, "mean_p_special_b": 0.001, "mean_p_special_o": 0.003}}}


def test_the_control_token_finding_follows_its_numbers_for_every_sign():
    from lossgap.analysis.mechanisms import mechanism_findings

    (text,) = mechanism_findings("instruct", "base", {"special_mass": _special(0.5, 0.05, 0.03, 0.08)})
    assert "instruct puts 3.0% of its probability (95% CI 2.0% to 5.0%)" in text
    assert "(<|endoftext|>, <|im_end|>)" in text
    assert "D is +0.4500 instead of +0.5000" in text and "accounts for 10% of D" in text
    assert "the largest part on Math (80% of the change" not in text and "most of it on Math (80% of the change" in text
    (text,) = mechanism_findings("instruct", "base", {"special_mass": _special(0.5, 0.05, -0.01, 0.08)})
    assert "not shown at the 95% level" in text and "accounts for" not in text
    (text,) = mechanism_findings("instruct", "base", {"special_mass": _special(-0.2, 0.05, 0.03, 0.08)})
    assert "accounts for" not in text and "% of D" not in text and "D is -0.2500 instead of -0.2000" in text
    (text,) = mechanism_findings("instruct", "base", {"special_mass": _special(0.04, 0.05, 0.03, 0.08)})
    assert "accounts for more than all of D" in text


def test_the_control_token_table_shows_each_domains_change_and_no_interval_for_one_document():
    from lossgap.report.mechanisms import special_mass_table

    table = special_mass_table("instruct", "base", _special(0.5, 0.05, 0.03, 0.08))
    cells = {row[0].display: [c.display for c in row] for row in table.rows}
    assert cells["all"][2:] == ["0.20%", "3.00%", "+0.5000", "+0.4500", "-0.0500", "-0.0800 to -0.0300", "10.0%"]
    assert cells["Math"][6:] == ["-0.1000", "-0.0800 to -0.0300", "10.0%"]
    assert cells["Code"][7] == "n/a (1 document)"
    negative = special_mass_table("instruct", "base", _special(-0.2, 0.05, 0.03, 0.08))
    assert negative.rows[0][-1].display == "n/a"  # no share of a negative D


def test_truncation_splits_the_main_figures_by_context_and_says_so():
    from lossgap.analysis.explanation import truncation
    from lossgap.analysis.explanation_findings import truncation_finding
    from lossgap.report.mechanisms import truncation_table

    rng = np.random.default_rng(0)
    n = 600
    doc_id = np.repeat(np.arange(6), 100)
    truncated = np.tile(np.arange(100) >= 70, 6) & (doc_id >= 3)  # documents 3-5 lost their start at a row edge
    tokens = {"doc_id": doc_id, "truncated": truncated, "nll_b": rng.gamma(2.0, 1.0, n),
              "nll_o": rng.gamma(2.0, 1.1, n), "kl_bo": rng.gamma(1.0, 0.3, n), "top1_agree": rng.random(n) < 0.5}
    got = truncation(tokens, n_boot=300, seed=1)
    delta = tokens["nll_o"] - tokens["nll_b"]
    assert got["truncated_tokens"] == 90 and got["share_truncated"] == pytest.approx(0.15)
    whole, cut = got["whole_context"], got["truncated"]
    assert whole["n_documents"] == 6 and cut["n_documents"] == 3 and cut["n_tokens"] == 90
    assert whole["d"]["value"] == pytest.approx(delta[~truncated].mean())
    assert cut["d"]["value"] == pytest.approx(delta[truncated].mean())
    assert cut["kl_bo"]["value"] == pytest.approx(tokens["kl_bo"][truncated].mean())
    assert cut["same_top1"]["value"] == pytest.approx(tokens["top1_agree"][truncated].mean())
    assert whole["d"]["ci_low"] < whole["d"]["value"] < whole["d"]["ci_high"]
    text = truncation_finding("sft", got)
    assert text.startswith("Truncated context: 15% of the scored tokens were predicted without their whole document")
    assert f"{whole['d']['value']:+.4f} nats/token (510 tokens, 95% CI" in text and "(90 tokens, 95% CI" in text
    table = truncation_table("sft", "base", got)
    assert [r[1].display for r in table.rows] == ["510", "90"]
    one = truncation({k: v[:100] if k != "truncated" else np.arange(100) >= 70 for k, v in tokens.items()}, 300, 1)
    assert one["truncated"]["d"]["ci_low"] is None
    assert "95% CI n/a: 1 document" in truncation_finding("sft", one)
    assert truncation_table("sft", "base", one).rows[1][4].display == "n/a (1 document)"


def test_the_paired_pass_says_its_dtype_and_float32_check():
    from lossgap.report.mechanisms import paired_pass_text

    check = {"dtype": "bfloat16", "tokens": 63, "input_tokens": 64, "warn": True,
             "limits": {"mean_abs_diff": 0.075, "mean_diff": 0.01},
             "statistics": {"nll_b": {"mean_abs_diff": 0.2, "max_abs_diff": 0.9, "mean_diff": -0.02}}}
    from lossgap.analysis.precision import pair_check_text

    paired = {"dtype": {"base": "bfloat16", "sft": "bfloat16"}, "fp32_check": check,
              "fp32_check_text": pair_check_text(check, ("base", "sft"))}
    text = paired_pass_text("sft", "base", paired)
    assert text.startswith("The paired pass of base and sft ran in bfloat16; its float32 check: bfloat16 against")
    assert "NLL of base off by 0.2 on average" in text and "past the limits" in text
    plain = paired_pass_text("sft", "base", {"dtype": {"base": "float32", "sft": "float32"}, "fp32_check": None})
    assert plain == "The paired pass of base and sft ran in float32 (no float32 check needed)."
