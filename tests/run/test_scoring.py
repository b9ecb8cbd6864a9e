"""End-to-end scoring: explicit targets equal HF's own loss, and numbers do not depend on batching."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers import ARCHS, read_summary, read_tokens, score_run, write_jsonl


def _hf_loss(model_dir, ids: list[int], labels: list[int]) -> float:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]), use_cache=False)
    return out.loss.item()


@pytest.mark.parametrize("arch", ARCHS)
def test_offsets_equal_hf_losses(tmp_path, tiny_models, arch):
    """Offset 1 == HF loss with labels=input_ids; offset 2 == HF loss with labels shifted beforehand."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    text = "def mean(values):\n    return sum(values) / len(values)\n"
    corpus = write_jsonl(tmp_path / "one.jsonl", [{"text": text}])
    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    for offset, labels in ((1, ids), (2, ids[1:] + [-100])):
        res = score_run(tiny_models[arch], corpus, tmp_path / f"o{offset}", layout="single", seq_len=128,
                        label_offset=offset)
        assert res.summary["n_tokens"] == len(ids) - offset
        assert res.summary["mean_nll"] == pytest.approx(_hf_loss(tiny_models[arch], ids, labels), abs=1e-5)


def test_batch_size_does_not_change_numbers(tmp_path, llama_dir, pile_jsonl):
    runs = {}
    for layout in ("packed", "single"):
        for bs in (1, 3, 8):
            res = score_run(llama_dir, pile_jsonl, tmp_path / f"{layout}{bs}", layout=layout, seq_len=48,
                            batch_size=bs)
            runs[(layout, bs)] = read_tokens(res.out_dir)
    for layout in ("packed", "single"):
        ref = runs[(layout, 1)]
        for bs in (3, 8):
            other = runs[(layout, bs)]
            assert (other[["doc_id", "pos", "target"]].values == ref[["doc_id", "pos", "target"]].values).all()
            assert np.abs(other.nll.values - ref.nll.values).max() <= 1e-5


def test_outputs_agree_with_each_other(tmp_path, llama_dir, pile_jsonl, pile_records):
    """documents.parquet and summary.json are the per-token file, summed independently here."""
    res = score_run(llama_dir, pile_jsonl, tmp_path / "run", seq_len=64)
    tokens = read_tokens(res.out_dir)
    docs = pq.read_table(res.out_dir / "documents.parquet").to_pandas().set_index("doc_id")
    by_doc = tokens.groupby("doc_id").nll.agg(["sum", "count"])
    assert np.allclose(docs.loc[by_doc.index, "nll_sum"], by_doc["sum"], atol=1e-4)
    assert (docs.loc[by_doc.index, "n_tokens"] == by_doc["count"]).all()
    assert list(docs.n_bytes) == [len(r["text"].encode()) for r in pile_records]

    s = read_summary(res.out_dir)
    mean = tokens.nll.astype("float64").mean()
    assert s["complete"] is True and s["tokens_file"] == "tokens.parquet"
    assert s["n_tokens"] == len(tokens) and s["n_documents"] == len(pile_records)
    assert s["mean_nll"] == pytest.approx(mean, rel=1e-6)
    assert s["perplexity"] == pytest.approx(math.exp(mean), rel=1e-6)
    n_bytes = sum(len(r["text"].encode()) for r in pile_records)
    assert s["bits_per_byte"] == pytest.approx(tokens.nll.astype("float64").sum() / (math.log(2) * n_bytes), rel=1e-6)
    for domain, group in tokens.groupby("domain", observed=True):
        assert s["per_domain"][domain]["mean_nll"] == pytest.approx(group.nll.astype("float64").mean(), rel=1e-6)
        assert s["per_domain"][domain]["n_tokens"] == len(group)
    doc_means = (docs.nll_sum / docs.n_tokens).mean()
    assert s["doc_mean_nll"] == pytest.approx(doc_means, rel=1e-6)
    assert s["special_tokens"] == {"bos_id": 1, "eos_id": 2}
    assert s["mask_probe"]["passed"] is True
    assert s["truncated_context_tokens"] == int(tokens.truncated.sum()) > 0
    assert s["versions"]["torch"] == torch.__version__
    meta = json.loads(pq.read_schema(res.out_dir / "tokens.parquet").metadata[b"lossgap"])
    assert meta["model"]["model_type"] == "llama" and meta["config"]["layout"]["seq_len"] == 64


def test_bos_eos_policy_changes_the_scored_tokens(tmp_path, llama_dir, pile_jsonl, pile_records, tokenizer):
    res = score_run(llama_dir, pile_jsonl, tmp_path / "plain", add_bos=False, add_eos=False)
    n_text = sum(len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in pile_records)
    assert res.summary["n_tokens"] == n_text - len(pile_records)
    assert res.summary["special_tokens"] == {"bos_id": None, "eos_id": None}
    res = score_run(llama_dir, pile_jsonl, tmp_path / "both")
    assert res.summary["n_tokens"] == n_text + len(pile_records)  # BOS never scored, EOS always scored


def test_corpus_selection_options(tmp_path, llama_dir, pile_jsonl):
    res = score_run(llama_dir, pile_jsonl, tmp_path / "a", skip=3, max_docs=5)
    docs = pq.read_table(res.out_dir / "documents.parquet").column("doc_id").to_pylist()
    assert docs == [3, 4, 5, 6, 7]
    res = score_run(llama_dir, pile_jsonl, tmp_path / "b", sample=6, seed=7)
    sample = pq.read_table(res.out_dir / "documents.parquet").column("doc_id").to_pylist()
    res = score_run(llama_dir, pile_jsonl, tmp_path / "c", sample=6, seed=7)
    assert pq.read_table(res.out_dir / "documents.parquet").column("doc_id").to_pylist() == sample
    assert len(sample) == 6 and sample != list(range(6))
    res = score_run(llama_dir, pile_jsonl, tmp_path / "d", max_tokens=200)
    assert 200 <= res.summary["input_tokens"] < 200 + 300


def test_bfloat16_run_reports_its_deviation_from_float32(tmp_path, llama_dir, pile_jsonl):
    import shutil

    # weights that bf16 holds exactly (as a model published in bf16): the float32 run then computes the float32
    # reference of the very weights the bf16 run scores with
    model = tmp_path / "bf16-weights"
    AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.bfloat16).save_pretrained(model)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llama_dir / name, model)
    ref = score_run(model, pile_jsonl, tmp_path / "fp32", seq_len=64, batch_size=4)
    res = score_run(model, pile_jsonl, tmp_path / "bf16", seq_len=64, batch_size=4, dtype="bfloat16")
    check = res.summary["fp32_check"]
    assert ref.summary["fp32_check"] is None and res.summary["dtype"] == "bfloat16"
    assert check["dtype"] == "bfloat16" and check["input_tokens"] == 64 and check["tokens"] > 50
    # the check scores the first row again (packed: its targets are the run's first ones in document order); what it
    # recorded is what an independent fp32 run gives on the same targets
    a, b = read_tokens(ref.out_dir), read_tokens(res.out_dir)
    first = slice(0, check["tokens"])
    diff = b.nll.values[first].astype(np.float64) - a.nll.values[first]
    assert check["mean_abs_diff"] == pytest.approx(np.abs(diff).mean(), abs=1e-4)
    assert check["mean_nll_diff"] == pytest.approx(diff.mean(), abs=1e-4)
    assert check["max_abs_diff"] == pytest.approx(np.abs(diff).max(), abs=1e-3)
    full_run = np.abs(b.nll.values.astype(np.float64) - a.nll.values).mean()
    assert 0 < check["max_abs_diff"] < 0.5 and check["mean_abs_diff"] < 0.05
    assert 0.2 < check["mean_abs_diff"] / full_run < 5  # the checked slice is typical of the whole run
    assert abs(res.summary["mean_nll"] - ref.summary["mean_nll"]) < 2e-2
    assert 0.0 <= res.summary["data_wait_share"] < 1.0


def _score_config(model, corpus, out, layout, mask, k, stride=None, plan="auto", batch_size=2):
    from lossgap import CorpusConfig, LayoutConfig, ModelConfig, RunConfig, ScoreConfig, TokenizeConfig

    return ScoreConfig(model=ModelConfig(str(model), dtype="float32", device="cpu"), corpus=CorpusConfig(str(corpus)),
                       tokenize=TokenizeConfig(add_eos=True),
                       layout=LayoutConfig(layout, 40, stride, mask, None, k),
                       run=RunConfig(str(out), batch_size=batch_size, plan=plan, quiet=True))


@pytest.mark.parametrize(("layout", "mask", "stride", "plan"), [
    ("packed", "block", None, "auto"), ("packed", "block", None, "dense"), ("packed", "causal", None, "auto"),
    ("single", "causal", None, "auto"), ("single", "causal", 16, "auto"),
])
def test_offsets_from_one_pass_equal_separate_runs(tmp_path, llama_dir, pile_jsonl, layout, mask, stride, plan):
    """score_offsets writes, for each offset, the files a run of that offset alone writes."""
    from lossgap.run.scoring import score, score_offsets

    together = score_offsets([_score_config(llama_dir, pile_jsonl, tmp_path / f"t{k}", layout, mask, k, stride, plan)
                              for k in (2, 1)])
    assert [r.summary["label_offset"] for r in together] == [2, 1]  # in the order asked for
    for k, res in zip((2, 1), together, strict=True):
        alone = score(_score_config(llama_dir, pile_jsonl, tmp_path / f"a{k}", layout, mask, k, stride, plan))
        a, b = read_tokens(alone.out_dir), read_tokens(res.out_dir)
        assert (a[["doc_id", "pos", "target", "truncated"]].values == b[["doc_id", "pos", "target", "truncated"]]
                .values).all()
        assert np.abs(a.nll.values - b.nll.values).max() <= 1e-5
        assert res.summary["n_tokens"] == alone.summary["n_tokens"]
        assert res.summary["mean_nll"] == pytest.approx(alone.summary["mean_nll"], abs=1e-6)
        assert res.summary["offsets_from_one_pass"] == [2, 1] and alone.summary["offsets_from_one_pass"] is None
    # one pass: the input tokens counted once, as many as one offset alone needs (offset 1's rows serve offset 2)
    assert together[0].summary["input_tokens"] == score(
        _score_config(llama_dir, pile_jsonl, tmp_path / "k1", layout, mask, 1, stride, plan)).summary["input_tokens"]


def test_offsets_from_one_pass_refuse_different_configurations(tmp_path, llama_dir, pile_jsonl):
    from lossgap.run.scoring import score_offsets

    with pytest.raises(ValueError, match="differ only in label_offset"):
        score_offsets([_score_config(llama_dir, pile_jsonl, tmp_path / "a", "packed", "block", 1),
                       _score_config(llama_dir, pile_jsonl, tmp_path / "b", "packed", "causal", 2)])
    with pytest.raises(ValueError, match="its own label offset"):
        score_offsets([_score_config(llama_dir, pile_jsonl, tmp_path / "a", "packed", "block", 1),
                       _score_config(llama_dir, pile_jsonl, tmp_path / "b", "packed", "block", 1)])


@pytest.mark.parametrize("layout,mask,seq_len", [("packed", "block", 96), ("single", "causal", 48)])
def test_chat_context_scores_exactly_the_raw_targets(tmp_path, pile_jsonl, layout, mask, seq_len):
    """--chat-context puts each document after the instruct model's own chat template up to the assistant's reply:
    the same (document, position, target) set is scored, each target now with the chat prefix as its context."""
    from lossgap.data.encode import chat_prefix
    from lossgap.demo import DEMO_MODELS

    instruct = DEMO_MODELS / "instruct"
    raw = score_run(instruct, pile_jsonl, tmp_path / "raw", layout=layout, mask=mask, seq_len=seq_len)
    chat = score_run(instruct, pile_jsonl, tmp_path / "chat", layout=layout, mask=mask, seq_len=seq_len,
                     chat_context=True)
    a, b = read_tokens(raw.out_dir), read_tokens(chat.out_dir)
    for column in ("doc_id", "pos", "target", "domain", "truncated"):  # the raw run's cuts: the same contexts
        assert (a[column].to_numpy() == b[column].to_numpy()).all(), column
    assert a["truncated"].any()  # documents were cut at row or window edges
    assert not np.allclose(a["nll"], b["nll"])  # the context changed, so the predictions did
    tok = AutoTokenizer.from_pretrained(instruct)
    prefix = chat_prefix(tok, "Please write a document.", "instruct")
    assert tok.decode(prefix) == ("<|endoftext|><|im_start|>user\nPlease write a document.<|im_end|>\n"
                                  "<|im_start|>assistant\n")
    assert chat.summary["chat_prefix_tokens"] == len(prefix) and raw.summary["chat_prefix_tokens"] is None
    # a document not cut at a row edge: its loss is the model's own loss on prefix + document, document tokens only
    whole = b.groupby("doc_id")["truncated"].any()
    doc = int(whole[~whole].index[0])
    text = json.loads(pile_jsonl.read_text().splitlines()[doc])["text"]
    ids = prefix + tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(ids) <= seq_len  # the document fits one row: nothing was cut
    expected = _hf_loss(instruct, ids, [-100] * len(prefix) + ids[len(prefix):])
    assert float(b[b["doc_id"] == doc]["nll"].mean()) == pytest.approx(expected, abs=1e-4)
    # a document continued in a second row (or window) and no further: its continued targets are predicted from the
    # prefix and the continued tokens alone, as the raw run predicts them from the continued tokens alone
    bos = raw.summary["special_tokens"]["bos_id"]
    for doc, rows in b.groupby("doc_id"):
        cut = rows[rows["truncated"]]
        if cut.empty or len(cut) != cut["pos"].max() - cut["pos"].min() + 1 or cut["pos"].max() != rows["pos"].max():
            continue
        first = int(cut["pos"].min())
        if layout == "single" and len(cut) + 1 > seq_len:
            continue
        text = json.loads(pile_jsonl.read_text().splitlines()[doc])["text"]
        raw_ids = ([bos] if bos is not None else []) + tok(text, add_special_tokens=False)["input_ids"] + [
            tok.eos_token_id]
        start = first - 1 if layout == "packed" else first - (first - 1) % seq_len - 1
        ids = prefix + raw_ids[start:]
        labels = [-100] * (len(prefix) + first - start) + raw_ids[first:]
        expected = _hf_loss(instruct, ids, labels)
        assert float(cut["nll"].mean()) == pytest.approx(expected, abs=1e-4)
        break
    else:
        pytest.fail("no document continued in one more row")


@pytest.mark.parametrize("layout,mask,seq_len", [("packed", "block", 96), ("single", "causal", 48)])
def test_an_end_of_turn_final_target_changes_only_each_whole_documents_last_target(tmp_path, pile_jsonl, layout, mask,
                                                                                  seq_len):
    """--chat-end-of-turn: the chat-formatted run's targets are the raw run's but for the final target of each whole
    document, the template's <|im_end|> in place of <|endoftext|>; the document --max-tokens cuts keeps its last text
    token, and every truncated flag is the raw run's. The end-of-turn target is scored as the model sees it after
    the prefix and the whole document."""
    from lossgap.data.encode import chat_prefix
    from lossgap.demo import DEMO_MODELS

    instruct = DEMO_MODELS / "instruct"
    tok = AutoTokenizer.from_pretrained(instruct)
    im_end, eos = tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id
    kw = {"layout": layout, "mask": mask, "seq_len": seq_len, "max_tokens": 1000}
    raw = score_run(instruct, pile_jsonl, tmp_path / "raw", **kw)
    chat = score_run(instruct, pile_jsonl, tmp_path / "chat", chat_context=True, chat_end_of_turn=True, **kw)
    a, b = read_tokens(raw.out_dir), read_tokens(chat.out_dir)
    for column in ("doc_id", "pos", "domain", "truncated"):
        assert (a[column].to_numpy() == b[column].to_numpy()).all(), column
    assert a["truncated"].any() and chat.summary["max_tokens"]["last_document_cut"]
    last = a.groupby("doc_id")["pos"].transform("max").to_numpy() == a["pos"].to_numpy()
    whole = last & (a["target"].to_numpy() == eos)
    assert whole.sum() == last.sum() - 1  # every document but the one the cap cut ends with EOS in the raw run
    assert (b["target"].to_numpy()[whole] == im_end).all()
    assert (b["target"].to_numpy()[~whole] == a["target"].to_numpy()[~whole]).all()
    assert chat.summary["chat_end_of_turn_id"] == im_end and raw.summary["chat_end_of_turn_id"] is None
    assert chat.summary["special_tokens"]["eos_id"] == eos  # the EOS it replaces, as the raw run's
    prefix = chat_prefix(tok, "Please write a document.", "instruct")
    cut = b.groupby("doc_id")["truncated"].any()
    doc = int(cut[~cut].index[0])  # a document in one row: its loss is the model's own on prefix + document
    text = json.loads(pile_jsonl.read_text().splitlines()[doc])["text"]
    ids = prefix + tok(text, add_special_tokens=False)["input_ids"] + [im_end]
    expected = _hf_loss(instruct, ids, [-100] * len(prefix) + ids[len(prefix):])
    assert float(b[b["doc_id"] == doc]["nll"].mean()) == pytest.approx(expected, abs=1e-4)


def test_chat_context_needs_a_chat_template(tmp_path, pile_jsonl):
    from lossgap.demo import DEMO_MODELS
    from lossgap.errors import ModelError

    with pytest.raises(ModelError, match="no chat template"):
        score_run(DEMO_MODELS / "base", pile_jsonl, tmp_path / "r", chat_context=True)


def test_start_up_costs_are_recorded_step_by_step_and_said(tmp_path, llama_dir, pile_jsonl, capsys):
    from lossgap.cli import main

    code = main(["score", "--model", str(llama_dir), "--corpus", str(pile_jsonl), "--out", str(tmp_path / "r"),
                 "--seq-len", "64", "--device", "cpu", "--dtype", "float32"])
    assert code == 0
    s = read_summary(tmp_path / "r")
    steps = s["startup_seconds"]
    assert list(steps) == ["setup", "load", "head_check", "plan_and_batch_size", "mask_probe"]
    assert all(v >= 0 for v in steps.values()) and abs(sum(steps.values()) - s["load_seconds"]) < 0.01
    assert f"lossgap: {llama_dir}: ready in {s['load_seconds']:.1f} s (setup " in capsys.readouterr().err


def test_one_float32_pass_checks_every_label_offset_of_the_same_rows(tmp_path, llama_dir, pile_jsonl, monkeypatch):
    """score_offsets in bf16: the float32 check of offsets 1 and 2 (the same rows) takes one float32 forward pass,
    and each offset's check equals what its run alone records on the same slice."""
    from dataclasses import replace

    from lossgap.engine import forward
    from lossgap.run.scoring import score_offsets

    passes = []
    original = forward.in_float32

    def counting(*args, **kwargs):
        passes.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(forward, "in_float32", counting)
    cfgs = [_score_config(llama_dir, pile_jsonl, tmp_path / f"k{k}", "packed", "block", k) for k in (1, 2)]
    for c in cfgs:
        c.model = replace(c.model, dtype="bfloat16")
    together = score_offsets(cfgs)
    assert len(passes) == 1
    checks = [r.summary["fp32_check"] for r in together]
    assert all(c["tokens"] > 0 and c["dtype"] == "bfloat16" for c in checks)
    assert checks[0]["input_tokens"] == checks[1]["input_tokens"]  # the same slice of the same rows
    alone = score_offsets([replace(cfgs[1], run=replace(cfgs[1].run, out=str(tmp_path / "alone")))])[0]
    assert alone.summary["fp32_check"]["mean_abs_diff"] == pytest.approx(checks[1]["mean_abs_diff"], abs=1e-7)
