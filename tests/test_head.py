"""Chunked fp32 NLL equals cross-entropy on the model's own full logits; unknown logit transforms are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ARCHS
from transformers import AutoModelForCausalLM

from lossgap.errors import ModelError
from lossgap.head import CPU_CHUNK_BYTES, OutputHead


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_nll_matches_full_logits(tiny_models, arch):
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0].double()
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0]
        ref = F.cross_entropy(logits[:-1], ids[0, 1:], reduction="none")
        for chunk in (1, 7, 1000):
            head = OutputHead(model)
            head.chunk_tokens = chunk
            got = head.nll(hidden[:-1], ids[0, 1:])
            assert got.dtype == torch.float32
            assert (got.double() - ref).abs().max().item() <= 1e-5
    assert OutputHead(model).verify(model.config.vocab_size) <= 1e-5


def test_gemma_softcapping_is_applied_and_checked(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["gemma2"], dtype=torch.float32).eval()
    head = OutputHead(model)
    assert head.softcap == 5.0
    head.softcap = None  # pretend lossgap did not know about soft-capping
    with pytest.raises(ModelError, match="does not reproduce the model's logits"):
        head.verify(model.config.vocab_size)


def test_chunk_size_follows_the_memory_budget_and_the_cpu_cache(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    vocab = model.config.vocab_size
    assert OutputHead(model, chunk_mb=1).chunk_tokens == (1 << 20) // (vocab * 12)
    # on the CPU a large budget is capped so one chunk's fp32 logits fit CPU_CHUNK_BYTES
    assert OutputHead(model, chunk_mb=1024).chunk_tokens == CPU_CHUNK_BYTES // (vocab * 4)
    assert (1024 << 20) // (vocab * 12) > CPU_CHUNK_BYTES // (vocab * 4)
