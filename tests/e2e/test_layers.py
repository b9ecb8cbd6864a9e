"""--layers end to end, on pairs whose answer is known by construction: a fine-tune that changed one decoder layer
only, and a model against itself; the refusal of a pair of two architectures before any model loads."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from lossgap.cli import main
from tests.helpers import tiny_config, write_jsonl

CHANGED = 2  # the only decoder layer the fine-tune changed


@pytest.fixture(scope="module")
def fine_tune(tmp_path_factory, tokenizer) -> dict:
    """A four-layer Llama and a copy whose layer CHANGED alone has other weights."""
    root = tmp_path_factory.mktemp("finetune")
    config = tiny_config("llama", len(tokenizer))
    config.num_hidden_layers = 4
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config)
    base.save_pretrained(root / "base")
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in base.named_parameters():
            if f"layers.{CHANGED}." in name and param.dim() == 2:
                param.add_(0.5 * torch.randn_like(param))
    base.save_pretrained(root / "sft")
    for name in ("base", "sft"):
        tokenizer.save_pretrained(root / name)
    return {"base": root / "base", "sft": root / "sft"}


def _compare(out, base, other, corpus, *more) -> int:
    return main(["compare", "--base", str(base), "--model", f"sft={other}", "--corpus", str(corpus), "--out", str(out),
                 "--matrix", "single", "--seq-len", "96", "--batch-size", "2", "--device", "cpu", "--dtype", "float32",
                 "--bootstrap", "200", "--quiet", "--layers", "--layers-blocks", "4", *more])


@pytest.fixture(scope="module")
def attributed(tmp_path_factory, fine_tune, pile_records) -> dict:
    root = tmp_path_factory.mktemp("layers")
    corpus = write_jsonl(root / "pile.jsonl", pile_records[:12])
    out = root / "cmp"
    assert _compare(out, fine_tune["base"], fine_tune["sft"], corpus, "--layers-tokens", "0") == 0
    results = json.loads((out / "results.json").read_text())
    return {"out": out, "results": results, "layers": results["explanation"]["models"]["sft"]["layers"],
            "corpus": corpus}


def test_one_changed_layer_carries_all_of_d(attributed):
    layers = attributed["layers"]
    d = layers["d"]
    assert abs(d) > 1e-3
    for block in layers["blocks"]:
        if block["layers"] == [CHANGED, CHANGED]:
            assert block["only"]["d"] == pytest.approx(d, abs=1e-12)  # that block alone is the whole fine-tune
            assert block["kept"]["d"] == pytest.approx(0.0, abs=1e-12)
        else:
            assert block["only"]["d"] == pytest.approx(0.0, abs=1e-12)
            assert block["kept"]["d"] == pytest.approx(d, abs=1e-12)
    assert layers["interaction"] == pytest.approx(0.0, abs=1e-12)
    changed = [r for r in layers["weight_change"]["by_layer"] if r["rel_change"] > 0]
    assert [r["layer"] for r in changed] == [CHANGED]
    assert len(layers["weight_change"]["identical"]) == layers["weight_change"]["n_params"] - 7  # q k v o gate up down


def test_the_weight_change_equals_float64_from_the_checkpoints(attributed, fine_tune):
    models = [AutoModelForCausalLM.from_pretrained(fine_tune[n], dtype=torch.float64) for n in ("base", "sft")]
    w = [dict(m.named_parameters()) for m in models]
    names = [n for n in w[0] if f"layers.{CHANGED}." in n]
    want = (sum((w[1][n] - w[0][n]).square().sum() for n in names) / sum(w[0][n].square().sum() for n in names))
    got = attributed["layers"]["weight_change"]["by_layer"][CHANGED]["rel_change"]
    assert got == pytest.approx(float(want.sqrt()), rel=1e-6)


def test_the_path_ends_are_the_two_models_and_d1_is_the_headline(attributed, fine_tune):
    layers, results = attributed["layers"], attributed["results"]
    points = {p["alpha"]: p["d"] for p in layers["interpolation"]["points"]}
    assert points[0.0] == 0.0
    headline = results["explanation"]["models"]["sft"]["attribution"]["dimensions"]["position"]["diff"]
    assert points[1.0] == pytest.approx(headline, abs=1e-6)
    assert layers["check"]["max_token_diff_alpha_1"] < 1e-5 and layers["check"]["max_token_diff_alpha_0"] < 1e-5
    # an interior point against a model built with the averaged weights, scored alone in float64
    stored = pq.read_table(attributed["out"] / "pairs" / "sft.layers.parquet")
    tokens = stored["tokens"].to_numpy().sum()
    half = (stored["alpha_0.5"].to_numpy() - stored["alpha_0"].to_numpy()).sum() / tokens
    assert points[0.5] == pytest.approx(half, abs=1e-12)


def test_interpolated_weights_score_as_a_model_built_with_them(fine_tune, tokenizer):
    """engine/hybrid.py interpolated(): per-module hooks give the logits of a model whose weights are the lerp."""
    from lossgap.engine import hybrid

    base = AutoModelForCausalLM.from_pretrained(fine_tune["base"], dtype=torch.float32).eval()
    other = AutoModelForCausalLM.from_pretrained(fine_tune["sft"], dtype=torch.float32).eval()
    mixed = AutoModelForCausalLM.from_pretrained(fine_tune["base"], dtype=torch.float32).eval()
    with torch.no_grad():
        for (_, w), (_, v), (_, m) in zip(base.named_parameters(), other.named_parameters(),
                                          mixed.named_parameters(), strict=True):
            m.copy_(torch.lerp(w, v, 0.25))
    ids = torch.tensor([tokenizer("def f(x):\n    return x + 1\n")["input_ids"]])
    with torch.inference_mode():
        want = mixed(ids).logits
        with hybrid.interpolated(base, other, 0.25, base.get_output_embeddings()):
            got = base(ids).logits
        after = base(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(fine_tune["base"], dtype=torch.float32).eval()(ids).logits
    assert torch.equal(got, want)
    assert torch.equal(after, plain)  # every parameter restored


def test_report_shows_the_layers_and_rebuilds_them(attributed, tmp_path, capsys):
    out = attributed["out"]
    md = (out / "report.md").read_text()
    assert "## Which weights carry the gap" in md and "layers_interpolation.png" in md
    assert "D along the weights' path" in md and "the logit lens" in md
    assert "started part-way, so the decoder ran 48 of 68 layer passes" in md  # the cost record, in words
    assert any(f.startswith("By layer (sft against base): Taken alone from the other model, layer 2 gives")
               for f in attributed["results"]["findings"])
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(out, copy)
    (copy / "results.json").unlink()
    assert main(["report", str(copy)]) == 0
    capsys.readouterr()
    assert json.loads((copy / "results.json").read_text()) == attributed["results"]


def test_a_token_budget_samples_rows_and_says_so(tmp_path, fine_tune, attributed):
    out = tmp_path / "sampled"
    assert _compare(out, fine_tune["base"], fine_tune["sft"], attributed["corpus"], "--layers-tokens", "150",
                    "--layers-blocks", "2") == 0
    layers = json.loads((out / "results.json").read_text())["explanation"]["models"]["sft"]["layers"]
    # two groups of two layers: the group holding the changed layer is halved, and its changed layer carries all of D
    assert [(h["name"], h["d"] == pytest.approx(layers["d"] if h["name"] == f"layer {CHANGED}" else 0, abs=1e-12))
            for h in layers["bisect"]] == [(f"layer {CHANGED}", True), (f"layer {CHANGED + 1}", True)]
    sample = layers["sample"]
    assert not sample["whole"] and 150 <= sample["tokens"] < attributed["layers"]["sample"]["tokens"]
    assert layers["check"]["d_ends_on_sample"] == pytest.approx(layers["check"]["d_pairs_on_sample"], abs=1e-6)
    assert "a sample of" in (out / "report.md").read_text()


def test_a_model_against_itself_has_no_layer_that_carries_anything(tmp_path, fine_tune, pile_records):
    corpus = write_jsonl(tmp_path / "pile.jsonl", pile_records[:4])
    out = tmp_path / "twin"
    assert _compare(out, fine_tune["base"], fine_tune["base"], corpus, "--layers-blocks", "2") == 0
    layers = json.loads((out / "results.json").read_text())["explanation"]["models"]["sft"]["layers"]
    values = [p["d"] for p in layers["interpolation"]["points"]]
    values += [b[k]["d"] for b in layers["blocks"] for k in ("only", "kept")]
    assert values == [0.0] * len(values)
    assert layers["weight_change"]["overall"] == 0.0
    assert all(r["kl"] == pytest.approx(0.0, abs=1e-7) for r in layers["logit_lens"])
    assert layers["findings"] == ["The two models score the sample identically (D = 0), so no block carries a "
                                  "difference."]


@pytest.mark.parametrize("other, said", [
    ("qwen2", ["has no paired pass with base"]),  # another tokenizer class: no paired pass at all
    ("llama", ["not one architecture with the same shapes", "parameters differ"]),  # 2 layers against 4
])
def test_a_pair_without_hybrids_is_refused_before_any_model_loads(tmp_path, fine_tune, tiny_models, pile_records,
                                                                   monkeypatch, capsys, other, said):
    corpus = write_jsonl(tmp_path / "pile.jsonl", pile_records[:4])
    monkeypatch.setattr("lossgap.run.comparison.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    code = _compare(tmp_path / "c", fine_tune["base"], tiny_models[other], corpus)
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "--layers" in err and "drop --layers" in err
    assert all(s in err for s in said)


def test_the_logit_lens_at_the_last_layer_is_the_paired_pass(attributed):
    """The lens's last row is each model's own output: its NLLs are the paired pass's on the lens's tokens."""
    out = attributed["out"]
    stored = pq.read_table(out / "pairs" / "sft.layers.parquet")
    pairs = pq.read_table(out / "pairs" / "sft.parquet").to_pandas()
    lens = attributed["layers"]["logit_lens"]
    if stored["lens_tokens"].to_numpy().sum() == len(pairs):  # the lens read every token: compare the means
        assert lens[-1]["nll_b"] == pytest.approx(float(np.mean(pairs["nll_base"])), abs=1e-5)
        assert lens[-1]["nll_o"] == pytest.approx(float(np.mean(pairs["nll_sft"])), abs=1e-5)
        assert lens[-1]["kl"] == pytest.approx(float(np.mean(pairs["kl_base_sft"])), abs=1e-5)
    else:
        pytest.fail("the corpus is small enough for the lens to read every token")


def test_resumed_passes_store_the_sums_of_full_passes(tmp_path, fine_tune, attributed, monkeypatch):
    """Passes that start part-way from a kept residual stream (engine/prefix.py) give the full passes' sums bit for
    bit, and run only the layers after the boundary: with 4 groups of one layer, the 5 path points run every layer,
    embeddings and layer 0 every layer twice, layer k's only/kept 4 - k each, the final norm's none."""
    cost = json.loads((attributed["out"] / "pairs" / "sft.layers.json").read_text())["cost"]
    assert cost["resume_boundaries"] == [1, 2, 3, 4]
    assert (cost["decoder_layers_run"], cost["decoder_layers_without_resuming"]) == (5 * 4 + 2 * (4 + 4 + 3 + 2 + 1),
                                                                                     17 * 4)
    monkeypatch.setattr("lossgap.run.layers.KEPT_BYTES", 0)  # no state fits: every pass from the embeddings
    out = tmp_path / "full"
    assert _compare(out, fine_tune["base"], fine_tune["sft"], attributed["corpus"], "--layers-tokens", "0") == 0
    full = json.loads((out / "pairs" / "sft.layers.json").read_text())["cost"]
    assert full["resume_boundaries"] == [] and full["decoder_layers_run"] == full["decoder_layers_without_resuming"]
    assert pq.read_table(out / "pairs" / "sft.layers.parquet").equals(
        pq.read_table(attributed["out"] / "pairs" / "sft.layers.parquet"))


def test_a_gemma2_pair_resumes_in_bf16_with_the_full_passes_sums(tmp_path, tokenizer, pile_records, monkeypatch):
    """Sliding-window and soft-capped layers, scaled embeddings, bf16: the resumed passes' sums are the full ones."""
    config = tiny_config("gemma2", len(tokenizer))
    config.num_hidden_layers = 4
    config.layer_types = [config.layer_types[i % len(config.layer_types)] for i in range(4)]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    for name in ("base", "sft"):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.1 * torch.randn_like(param))
    corpus = write_jsonl(tmp_path / "pile.jsonl", pile_records[:6])
    sums = {}
    for variant, kept_bytes in (("resumed", 2 << 30), ("full", 0)):
        monkeypatch.setattr("lossgap.run.layers.KEPT_BYTES", kept_bytes)
        out = tmp_path / variant
        assert _compare(out, tmp_path / "base", tmp_path / "sft", corpus, "--dtype", "bfloat16", "--layers-blocks", "2",
                        "--layers-tokens", "0") == 0
        cost = json.loads((out / "pairs" / "sft.layers.json").read_text())["cost"]
        assert (cost["decoder_layers_run"] < cost["decoder_layers_without_resuming"]) == (variant == "resumed")
        sums[variant] = pq.read_table(out / "pairs" / "sft.layers.parquet")
    assert sums["resumed"].equals(sums["full"])
