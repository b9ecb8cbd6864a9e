"""Tiled fp32 NLL equals cross-entropy on the model's own full logits; unknown logit transforms are refused."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from lossgap.engine.head import BYTES_PER_LOGIT, CPU_TILE_BYTES, VOCAB_TILE, OutputHead
from lossgap.errors import ModelError, UsageError
from tests.helpers import ARCHS


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


class _Bare(torch.nn.Module):
    """A model that is only an output projection, so a case can give OutputHead any projection."""

    config = type("Config", (), {"model_type": "custom"})()

    def __init__(self, proj):
        super().__init__()
        self.proj = proj

    def get_output_embeddings(self):
        return self.proj


def _Head(proj, chunk_tokens: int, vocab_tile: int) -> OutputHead:
    head = OutputHead(_Bare(proj))
    head.chunk_tokens, head.vocab_tile = chunk_tokens, vocab_tile
    return head


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

    head = OutputHead(_Bare(Wrapped(proj)))
    assert head.vocab_tile == proj.weight.shape[0]
    with torch.no_grad():
        ref = F.cross_entropy(_float64(proj, hidden), targets, reduction="none")
        assert (head.nll(hidden, targets).double() - ref).abs().max().item() <= 1e-5


# Cut Cross-Entropy (--loss-kernel cce). Off CUDA the package runs its torch.compile form of the same function, so
# these tests check lossgap's use of it (arguments, soft-capping, per-token output, the check against float64);
# benchmarks/gpu_check.py checks its Triton kernel on a GPU.

def _tiny(tiny_models, arch: str, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=dtype).eval()


@pytest.mark.parametrize("arch", ["llama", "gemma2"])  # gemma2: final-logit soft-capping passed to the kernel
def test_cce_kernel_matches_the_tiled_path(tiny_models, arch):
    model = _tiny(tiny_models, arch)
    head = OutputHead(model, kernel="cce")
    assert head.kernel == "cce"
    check = head.check_kernel(model.config.vocab_size)
    assert check["passed"] and check["max_abs_diff_vs_float64"] <= 1e-4
    ids = torch.randint(0, model.config.vocab_size, (1, 60), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0]
        ref = F.cross_entropy(model(input_ids=ids, use_cache=False).logits[0].double()[:-1], ids[0, 1:],
                              reduction="none")
        got = head.nll(hidden[:-1], ids[0, 1:])
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert (got.double() - ref).abs().max().item() <= 1e-5


def test_cce_kernel_in_bf16_passes_its_check(tiny_models):
    model = _tiny(tiny_models, "llama", torch.bfloat16)
    head = OutputHead(model, kernel="cce")
    check = head.check_kernel(model.config.vocab_size)
    # the kernel keeps logits in fp32 where the model rounds them to bf16: it is at least as close to float64
    assert check["passed"] and check["max_abs_diff_vs_float64"] <= check["tiled_max_abs_diff_vs_float64"] + 1e-2
    assert head.kernel == "cce"


def test_a_kernel_farther_from_float64_than_the_tiled_path_is_dropped(tiny_models):
    model = _tiny(tiny_models, "llama")
    head = OutputHead(model, kernel="cce")
    kernel = head._cce
    head._cce = lambda hidden, targets: kernel(hidden, targets) + 0.01  # off by 0.01 nats everywhere
    check = head.check_kernel(model.config.vocab_size)
    assert not check["passed"] and check["max_abs_diff_vs_float64"] >= 0.01
    assert head.kernel == "tiled" and head._cce is None


def test_cce_is_refused_where_it_cannot_serve(tiny_models, monkeypatch):
    model = _tiny(tiny_models, "llama")
    assert OutputHead(model, kernel="auto").kernel == "tiled"  # auto takes the kernel on CUDA only
    assert OutputHead(model, kernel="tiled").check_kernel(model.config.vocab_size) is None
    proj, _, _ = _head_case(bias=True)
    model.set_output_embeddings(proj)
    with pytest.raises(UsageError, match="not a plain Linear without bias"):
        OutputHead(model, kernel="cce")
    monkeypatch.setitem(sys.modules, "cut_cross_entropy", None)  # as if not installed
    with pytest.raises(UsageError, match="cut-cross-entropy is not installed"):
        OutputHead(_tiny(tiny_models, "llama"), kernel="cce")


def test_a_run_with_the_cce_kernel_scores_the_same_and_says_so(tmp_path, llama_dir, pile_jsonl):
    from tests.helpers import read_tokens, score_run

    tiled = score_run(llama_dir, pile_jsonl, tmp_path / "tiled", loss_kernel="tiled")
    cce = score_run(llama_dir, pile_jsonl, tmp_path / "cce", loss_kernel="cce")
    assert tiled.summary["loss_kernel"] == "tiled" and tiled.summary["loss_kernel_check"] is None
    assert cce.summary["loss_kernel"] == "cce" and cce.summary["loss_kernel_check"]["passed"]
    a, b = read_tokens(tiled.out_dir), read_tokens(cce.out_dir)
    assert (a[["doc_id", "pos", "target"]].values == b[["doc_id", "pos", "target"]].values).all()
    assert (a.nll - b.nll).abs().max() <= 1e-5


def test_a_projection_with_hooks_is_applied_whole():
    """Tensor parallelism gathers the head's output in a hook: slicing its weight would skip the hook."""
    proj, hidden, targets = _head_case()
    proj.register_forward_hook(lambda module, args, out: out * 2)
    head = OutputHead(_Bare(proj))
    assert not head.plain and head.vocab_tile == proj.weight.shape[0]
    with torch.no_grad():
        ref = F.cross_entropy(2 * _float64(proj, hidden), targets, reduction="none")
        assert (head.nll(hidden, targets).double() - ref).abs().max().item() <= 1e-6 * ref.abs().max().item()
