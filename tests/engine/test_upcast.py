"""The float32 check without a float32 copy of the model: one module's weights upcast at a time gives the numbers of
a whole float32 model, leaves the model exactly as it was, and checks a slice of the batch that predicts as the
whole batch does."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lossgap.data.encode import TokenizedDocument
from lossgap.data.layout import collate, packed_rows
from lossgap.engine.forward import CHECK_TOKENS, check_slice, float32_nll, score_batch
from lossgap.engine.head import OutputHead
from lossgap.engine.plans import make_plan
from lossgap.engine.upcast import float32_modules
from tests.helpers import ARCHS


def _batch(vocab: int, lengths=(40, 70, 25, 90), seq_len: int = 64):
    rng = np.random.default_rng(0)
    docs = [TokenizedDocument(i, "d", f"doc{i}", rng.integers(3, vocab, size=n), n) for i, n in enumerate(lengths)]
    return collate(list(packed_rows(docs, seq_len, 1)), 1, "restart")


def _state(model):
    return [(p.data_ptr(), p.dtype) for p in model.parameters()] + \
        [(id(b), b.dtype) for b in model.buffers()]


@pytest.mark.parametrize("arch", ARCHS)
def test_one_module_at_a_time_gives_a_float32_models_numbers_and_changes_nothing(tiny_models, arch):
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=torch.bfloat16).eval()
    batch = _batch(model.config.vocab_size)
    plan = make_plan("dense", model, "block", "restart", 1, 4)
    head = OutputHead(model)
    before, run = _state(model), score_batch(plan, head, batch)
    upcast = float32_nll(plan, head, batch)
    assert _state(model) == before  # the very tensors, in their dtypes
    np.testing.assert_array_equal(score_batch(plan, head, batch), run)  # and the run's numbers after it
    whole = copy.deepcopy(model).float()  # the reference: a float32 copy of everything
    reference = score_batch(make_plan("dense", whole, "block", "restart", 1, 4), OutputHead(whole), batch)
    np.testing.assert_allclose(upcast, reference, rtol=0, atol=2e-5)
    assert np.abs(run - reference).mean() > 1e-4  # bf16 really differs: the check measures something


def test_at_most_one_modules_weights_are_in_float32_at_a_time(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.bfloat16).eval()
    batch = _batch(model.config.vocab_size)
    plan = make_plan("dense", model, "block", "restart", 1, 4)
    seen = []

    def count(module, args, output):  # runs before the upcaster's own after-hook: the module is still upcast
        seen.append(sum(p.numel() for p in model.parameters() if p.dtype == torch.float32))
        own = sum(p.numel() for p in module.parameters(recurse=False))
        assert seen[-1] <= own, f"{type(module).__name__}: {seen[-1]} float32 weights, its own {own}"

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if any(True for _ in m.parameters(recurse=False)) and not isinstance(m, torch.nn.Embedding)]
    with float32_modules([model]):
        plan.dtype = torch.float32
        plan.hidden_states(batch)
    for h in hooks:
        h.remove()
    assert max(seen) > 0 and all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_an_exception_inside_puts_every_weight_back(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.bfloat16).eval()
    before = _state(model)
    layer = model.model.layers[1]

    def boom(module, args):
        raise RuntimeError("stop mid-forward")

    hook = layer.mlp.down_proj.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError), float32_modules([model]):
        model(input_ids=torch.tensor([[1, 5, 9, 4]]))
    hook.remove()
    assert _state(model) == before


def test_the_checked_slice_predicts_as_the_whole_batch_does(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    batch = _batch(model.config.vocab_size, lengths=[200, 40, 900, 300], seq_len=1024)
    plan = make_plan("dense", model, "block", "restart", 1, 8)
    head = OutputHead(model)
    sub, keep = check_slice(batch)
    assert batch.input_ids.shape[0] == 2 and sub.input_ids.shape == (1, CHECK_TOKENS)
    assert keep.sum() == sub.n_targets == CHECK_TOKENS - 2  # the first two documents' first tokens predict nothing
    np.testing.assert_allclose(score_batch(plan, head, sub), score_batch(plan, head, batch)[keep], atol=1e-5)
    assert set(zip(sub.doc_ids.tolist(), sub.target_pos.tolist(), strict=True)) <= \
        set(zip(batch.doc_ids.tolist(), batch.target_pos.tolist(), strict=True))


def test_a_window_scoring_only_its_tail_is_checked_on_enough_targets():
    from lossgap.data.layout import single_rows
    from lossgap.engine.forward import CHECK_MIN_TARGETS

    doc = TokenizedDocument(0, "d", "doc0", np.arange(3, 2003) % 300 + 3, 2000)
    second = list(single_rows([doc], 1024, 1, 256))[1]  # a strided window: its first 768 positions are context
    batch = collate([second], 1, "restart")
    first_scored = int(batch.flat_index.min())
    assert first_scored > 512
    sub, keep = check_slice(batch)
    assert sub.n_targets == keep.sum() == CHECK_MIN_TARGETS
    assert sub.input_ids.shape[1] == first_scored + CHECK_MIN_TARGETS


class _Scaled(torch.nn.Module):
    """A module with a weight of its own that runs a child with its own weights, twice: the upcasts nest."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.linspace(0.5, 1.5, 16))
        self.inner = torch.nn.Linear(16, 16)

    def forward(self, x):
        return self.inner(self.inner(x) * self.scale)


def test_nested_upcasts_share_the_buffer_and_equal_a_float32_copy():
    """A module inside another takes the buffer's space after its parent's (or fresh tensors when it does not fit):
    the numbers are a float32 copy's, and every parameter is its own bf16 tensor again afterwards."""
    torch.manual_seed(0)
    model = _Scaled().to(torch.bfloat16)
    reference = copy.deepcopy(model).float()
    x = torch.randn(3, 16)
    before = _state(model)
    with torch.no_grad(), float32_modules([model]):
        got = model(x)
    with torch.no_grad():
        want = reference(x)
    assert torch.equal(got, want)
    assert _state(model) == before and all(p.dtype == torch.bfloat16 for p in model.parameters())
