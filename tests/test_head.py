"""Tiled fp32 NLL equals cross-entropy on the model's own full logits; unknown logit transforms are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ARCHS
from transformers import AutoModelForCausalLM

from lossgap.errors import ModelError
from lossgap.head import BYTES_PER_LOGIT, CPU_TILE_BYTES, VOCAB_TILE, OutputHead


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_nll_matches_full_logits(tiny_models, arch):
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0].double()
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0]
        ref = F.cross_entropy(logits[:-1], ids[0, 1:], reduction="none")
        vocab = model.config.vocab_size
        # tiles of one token or one entry, tiles that do not divide the vocabulary, one tile spanning everything
        for chunk, tile in ((1, 1000), (7, 333), (1000, 1), (13, vocab - 1), (1000, vocab)):
            head = OutputHead(model)
            head.chunk_tokens, head.vocab_tile = chunk, tile
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


def test_tile_size_follows_the_memory_budget_and_the_cpu_cache(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    tile = min(model.config.vocab_size, VOCAB_TILE["cpu"])
    head = OutputHead(model, chunk_mb=1)
    assert head.vocab_tile == tile and head.chunk_tokens == (1 << 20) // (tile * BYTES_PER_LOGIT)
    # on the CPU a large budget is capped so one tile's logits fit CPU_TILE_BYTES
    assert OutputHead(model, chunk_mb=1024).chunk_tokens == CPU_TILE_BYTES // (tile * BYTES_PER_LOGIT)


def _head_case(vocab: int = 300, dim: int = 16, bias: bool = False, dtype=torch.float32):
    gen = torch.Generator().manual_seed(3)
    proj = torch.nn.Linear(dim, vocab, bias=bias).to(dtype)
    with torch.no_grad():
        proj.weight.copy_(torch.randn(vocab, dim, generator=gen) * 3)  # large logits: the running max matters
        if bias:
            proj.bias.copy_(torch.randn(vocab, generator=gen) * 5)
    hidden = torch.randn(50, dim, generator=gen).to(dtype)
    targets = torch.randint(0, vocab, (50,), generator=gen)
    targets[:3] = torch.tensor([0, vocab - 1, 255])  # first entry, last entry, the start of a tile
    return proj, hidden, targets


def _float64(proj, hidden):
    return F.linear(hidden.double(), proj.weight.double(), None if proj.bias is None else proj.bias.double())


class _Head(OutputHead):
    """OutputHead over a bare projection, so a case can use any projection."""

    def __init__(self, proj, chunk_tokens: int, vocab_tile: int):
        self.proj, self.softcap, self.scale, self.divide = proj, None, None, None
        self.vocab, self.chunk_tokens, self.vocab_tile = proj.weight.shape[0], chunk_tokens, vocab_tile


@pytest.mark.parametrize("bias", [False, True])
def test_tiled_nll_matches_float64_cross_entropy(bias):
    proj, hidden, targets = _head_case(bias=bias)
    with torch.no_grad():
        ref = F.cross_entropy(_float64(proj, hidden), targets, reduction="none")
        for chunk, tile in ((4, 64), (50, 255), (3, 300), (64, 7)):
            got = _Head(proj, chunk, tile).nll(hidden, targets)
            assert (got.double() - ref).abs().max().item() <= 1e-5


def test_tiled_nll_in_bf16_rounds_logits_as_the_model_does():
    """bf16 logits are rounded to bf16 before the fp32 loss, as the model's forward does; a tile changes that by
    at most a bf16 rounding of one logit."""
    proj, hidden, targets = _head_case(dtype=torch.bfloat16)
    with torch.no_grad():
        ref = F.cross_entropy(proj(hidden).double(), targets, reduction="none")
        got = _Head(proj, 16, 128).nll(hidden, targets)
        exact = F.cross_entropy(_float64(proj, hidden), targets, reduction="none")
    assert (got.double() - ref).abs().max().item() <= 0.1
    assert (got.double() - ref).abs().mean().item() <= 0.1 * (ref - exact).abs().mean().item() + 1e-4


def test_a_projection_that_is_not_linear_is_applied_whole():
    proj, hidden, targets = _head_case()

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.weight = inner, inner.weight

        def forward(self, x):
            return self.inner(x)

    class Model(torch.nn.Module):
        config = type("Config", (), {"model_type": "custom"})()

        def get_output_embeddings(self):
            return Wrapped(proj)

    head = OutputHead(Model())
    assert head.vocab_tile == proj.weight.shape[0]
    with torch.no_grad():
        ref = F.cross_entropy(_float64(proj, hidden), targets, reduction="none")
        assert (head.nll(hidden, targets).double() - ref).abs().max().item() <= 1e-5
