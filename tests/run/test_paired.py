"""The paired pass: two models on the same batches, every per-token statistic against float64 full softmax, the
NLLs against each model's own run, a model against itself, and resuming."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from lossgap.config import CorpusConfig, LayoutConfig, ModelConfig, RunConfig, ScoreConfig
from lossgap.engine.model import load_model
from lossgap.formats.paths import ComparisonFolder
from lossgap.run.paired import paired_pass
from tests.helpers import read_tokens


def _cfg(corpus, out, seq_len=64, plan="auto", **run) -> ScoreConfig:
    return ScoreConfig(model=ModelConfig("paired", dtype="float32", device="cpu"), corpus=CorpusConfig(str(corpus)),
                       layout=LayoutConfig("packed", seq_len, None, "block"),
                       run=RunConfig(str(out), batch_size=2, plan=plan, quiet=True, **run))


def _load(folder):
    return load_model(ModelConfig(str(folder), dtype="float32", device="cpu"), quiet=True)


def _run_pair(tiny_models, corpus, out, base="llama", other="qwen2", **kw):
    a, b = _load(tiny_models[base]), _load(tiny_models[other])
    result = paired_pass(_cfg(corpus, out / "run", **kw), ("base", "other"), a, b, a.tokenizer, ComparisonFolder(out))
    return pq.read_table(result.path).to_pandas(), result


def _float64_stats(folder, ids: list[int]) -> dict[str, np.ndarray]:
    """The model alone on one document, in float64: logits of every position, full log-softmax."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, :-1]
    logp = torch.log_softmax(logits, -1)
    target = torch.tensor(ids[1:])
    z_t = logits.gather(1, target[:, None])
    return {"logp": logp.numpy(), "logits": logits.numpy(), "nll": -logp.gather(1, target[:, None])[:, 0].numpy(),
            "entropy": -(logp.exp() * logp).sum(1).numpy(), "argmax": logits.argmax(1).numpy(),
            "p_argmax": logp.max(1).values.exp().numpy(), "rank": (logits > z_t).sum(1).numpy(),
            "p_target": logp.gather(1, target[:, None])[:, 0].exp().numpy()}


@pytest.mark.parametrize("other", ["qwen2", "gemma2"])
def test_every_statistic_equals_float64_full_softmax(tmp_path, tiny_models, tokenizer, pile_jsonl, other):
    pairs, result = _run_pair(tiny_models, pile_jsonl, tmp_path, other=other, seq_len=128)
    special = result.facts["special_ids"]  # the tokenizers' control tokens: <s>, </s>, <unk>, ... of the tiny one
    assert special and set(special) >= {tokenizer.bos_token_id, tokenizer.eos_token_id}
    checked = 0
    for doc_id, rows in pairs.groupby("doc_id"):
        if rows["truncated"].any() or checked >= 6:
            continue
        text = json.loads(pile_jsonl.read_text().splitlines()[doc_id])["text"]
        ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id]
        ref = {"base": _float64_stats(tiny_models["llama"], ids), "other": _float64_stats(tiny_models[other], ids)}
        assert list(rows["pos"]) == list(range(1, len(ids)))
        for name, r in ref.items():
            for col in ("nll", "entropy", "p_target", "p_argmax"):
                np.testing.assert_allclose(rows[f"{col}_{name}"], r[col], atol=1e-5, err_msg=f"{col}_{name}")
            np.testing.assert_allclose(rows[f"p_special_{name}"], np.exp(r["logp"][:, special]).sum(1), atol=1e-6)
            top2 = np.sort(r["logits"], 1)[:, -2:]
            clear = (top2[:, 1] - top2[:, 0]) > 1e-5  # no near-tie for the top-1
            assert (rows[f"argmax_{name}"].to_numpy()[clear] == r["argmax"][clear]).all()
            np.testing.assert_array_equal(rows[f"rank_{name}"], r["rank"])
        p_b, lp_b, lp_o = np.exp(ref["base"]["logp"]), ref["base"]["logp"], ref["other"]["logp"]
        np.testing.assert_allclose(rows["kl_base_other"], (p_b * (lp_b - lp_o)).sum(1), atol=1e-5)
        np.testing.assert_allclose(rows["kl_other_base"], (np.exp(lp_o) * (lp_o - lp_b)).sum(1), atol=1e-5)
        assert (rows["top1_agree"] == (rows["argmax_base"] == rows["argmax_other"])).all()
        checked += 1
    assert checked == 6  # whole documents (none cut at a row edge) checked


def test_paired_nlls_equal_each_models_own_run(tmp_path, tiny_models, pile_jsonl):
    """Each model's own run, tokenized with the baseline's tokenizer as a comparison does (a Qwen2 folder loads its
    tokenizer as Qwen2's class, which splits text differently)."""
    from lossgap.run.scoring import score

    pairs, result = _run_pair(tiny_models, pile_jsonl, tmp_path, plan="dense")
    base = _load(tiny_models["llama"])
    for name, arch in (("base", "llama"), ("other", "qwen2")):
        cfg = _cfg(pile_jsonl, tmp_path / arch, plan="docs")
        cfg.model = ModelConfig(str(tiny_models[arch]), dtype="float32", device="cpu")
        own = read_tokens(score(cfg, tokenizer=base.tokenizer).out_dir)
        assert (own["doc_id"].to_numpy() == pairs["doc_id"].to_numpy()).all()
        assert (own["pos"].to_numpy() == pairs["pos"].to_numpy()).all()
        assert np.abs(own["nll"].to_numpy() - pairs[f"nll_{name}"].to_numpy()).max() <= 1e-5
    assert result.facts["plan"] == "dense" and result.facts["input_tokens"] > 0


def test_a_model_against_itself(tmp_path, tiny_models, pile_jsonl):
    pairs, _ = _run_pair(tiny_models, pile_jsonl, tmp_path, other="llama")
    assert pairs["kl_base_other"].abs().max() < 1e-6 and pairs["kl_other_base"].abs().max() < 1e-6
    assert pairs["top1_agree"].all()
    for col in ("nll", "entropy", "p_target", "argmax", "p_argmax", "rank"):
        assert (pairs[f"{col}_base"] == pairs[f"{col}_other"]).all(), col


def test_a_resumed_pass_gives_the_same_file(tmp_path, tiny_models, pile_jsonl):
    whole, _ = _run_pair(tiny_models, pile_jsonl, tmp_path / "a", window_tokens=256)
    from lossgap.run import paired

    original = paired.run_windows
    calls = {"n": 0}

    def stop_after_two(cfg, engine, corpus, outputs, dist, runner):
        from lossgap.errors import LossgapError

        def limited(rows, documents, offsets):
            calls["n"] += 1
            if calls["n"] > 2:
                raise LossgapError("stopped (simulated)")
            return type(runner).score_window(runner, rows, documents, offsets)

        runner.score_window = limited
        return original(cfg, engine, corpus, outputs, dist, runner)

    paired.run_windows = stop_after_two
    try:
        with pytest.raises(Exception, match="simulated"):
            _run_pair(tiny_models, pile_jsonl, tmp_path / "b", window_tokens=256)
    finally:
        paired.run_windows = original
    assert not (tmp_path / "b" / "pairs" / "other.parquet").exists()
    assert len(list((tmp_path / "b" / "pairs" / ".other" / "shards").glob("window-*.parquet"))) == 2
    resumed, result = _run_pair(tiny_models, pile_jsonl, tmp_path / "b", window_tokens=256, resume=True)
    assert result.facts["windows"] > 2
    assert whole.equals(resumed)


def test_a_bf16_pass_checks_its_first_batch_against_float32_and_changes_nothing(tmp_path, tiny_models, pile_jsonl):
    """The check puts one model at a time (then both heads) in float32 and back: the pass's file is the same with and
    without it, and its facts hold each checked statistic's deviation."""
    from lossgap.engine.forward import PAIR_CHECKED
    from lossgap.formats.schema import FP32_LIMITS

    a, b = (load_model(ModelConfig(str(tiny_models[arch]), dtype="bfloat16", device="cpu"), quiet=True)
            for arch in ("llama", "qwen2"))
    results = {}
    for check in (True, False):
        out = tmp_path / str(check)
        cfg = _cfg(pile_jsonl, out / "run", window_tokens=256, fp32_check=check)
        results[check] = paired_pass(cfg, ("base", "other"), a, b, a.tokenizer, ComparisonFolder(out))
    checked, unchecked = (pq.read_table(results[c].path) for c in (True, False))
    assert checked.equals(unchecked) and results[False].facts["fp32_check"] is None
    check = results[True].facts["fp32_check"]
    assert check["dtype"] == "bfloat16" and check["tokens"] > 0 and set(check["statistics"]) == set(PAIR_CHECKED)
    for role, d in check["statistics"].items():
        assert 0 < d["mean_abs_diff"] < FP32_LIMITS["mean_abs_diff"] and abs(d["mean_diff"]) <= d["mean_abs_diff"], role
    assert check["warn"] is False and check["limits"] == FP32_LIMITS
    stored = json.loads(checked.schema.metadata[b"lossgap"])["facts"]["fp32_check"]
    assert stored == check
