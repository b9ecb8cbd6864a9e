"""An independent peer: lm-evaluation-harness's loglikelihood_rolling per document equals lossgap's single-document
per-document NLL sum (BOS as the prefix token, no EOS appended: what lm-eval scores)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers import score_run

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is installed by .ci/run (pip install '.[test]')")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_single_document_sums_equal_lm_eval_rolling(tmp_path, tiny_models, pile_jsonl, pile_records, arch):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    folder = tiny_models[arch]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=256, device="cpu")
    requests = [Instance("loglikelihood_rolling", {}, (r["text"],), i) for i, r in enumerate(pile_records)]
    peer = [-ll for ll in lm.loglikelihood_rolling(requests, disable_tqdm=True)]

    res = score_run(folder, pile_jsonl, tmp_path / "single", layout="single", seq_len=256, add_eos=False)
    docs = pq.read_table(res.out_dir / "documents.parquet").to_pandas()
    assert len(docs) == len(peer)
    for mine, theirs in zip(docs.nll_sum, peer, strict=True):
        assert mine == pytest.approx(theirs, rel=1e-5, abs=1e-3)
