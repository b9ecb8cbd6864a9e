"""A pass resumed from a kept residual stream gives the full pass's hidden states bit for bit, under every attention
plan, for every architecture (Gemma 2's sliding-window layers included), and leaves the layers as they were."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lossgap.data.encode import TokenizedDocument
from lossgap.data.layout import collate, packed_rows
from lossgap.engine import compiled, prefix
from lossgap.engine.hybrid import decoder_layers
from lossgap.engine.plans import make_plan
from tests.helpers import ARCHS, tiny_config

LAYERS = 4


def _model(arch: str, vocab: int, dtype: torch.dtype):
    config = tiny_config(arch, vocab)
    config.num_hidden_layers = LAYERS
    if getattr(config, "layer_types", None):  # Gemma 2: sliding-window and full layers alternate
        config.layer_types = [config.layer_types[i % len(config.layer_types)] for i in range(LAYERS)]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).to(dtype).eval()


def _batch(vocab: int, seq_len: int = 64):
    rng = np.random.default_rng(0)
    docs = [TokenizedDocument(i, "d", f"doc{i}", rng.integers(3, vocab, size=n), n)
            for i, n in enumerate((40, 70, 25, 90, 12))]
    return collate(list(packed_rows(docs, seq_len, 1)), 1, "restart")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("arch,plan_name", [(a, p) for a in ARCHS for p in ("dense", "docs", "varlen")
                                            if (a, p) != ("gemma2", "varlen")])  # varlen refuses soft-capping
def test_a_resumed_pass_is_the_full_pass_bit_for_bit(tokenizer, arch, plan_name, dtype):
    model = _model(arch, len(tokenizer), dtype)
    plan = make_plan(plan_name, model, "block", "restart", 1, 4)
    batch = _batch(model.config.vocab_size)
    kept: dict[int, list[torch.Tensor]] = {}
    with plan.attention(), prefix.kept_states(model, range(1, LAYERS + 1), kept):
        full = plan.hidden_states(batch)
    assert sorted(kept) == list(range(1, LAYERS + 1)) and all(len(v) == 1 for v in kept.values())
    calls = []
    counter = decoder_layers(model)[LAYERS - 1].register_forward_pre_hook(lambda m, a: calls.append(1))
    for boundary in range(1, LAYERS + 1):
        with plan.attention(), prefix.resumed(model, boundary, kept[boundary][0]):
            assert torch.equal(plan.hidden_states(batch), full)
    counter.remove()
    assert len(calls) == LAYERS  # the last layer's own call, even where its forward was skipped (boundary = LAYERS)
    assert not any("forward" in layer.__dict__ for layer in decoder_layers(model))  # nothing left on the layers
    with plan.attention():
        assert torch.equal(plan.hidden_states(batch), full)


def test_the_kept_state_does_the_skipped_layers_work(tokenizer):
    """A state from another batch changes the result: the layers after the boundary read the kept state, not what
    the skipped layers would have computed."""
    model = _model("llama", len(tokenizer), torch.float32)
    plan = make_plan("dense", model, "block", "restart", 1, 4)
    batch = _batch(model.config.vocab_size)
    kept: dict[int, list[torch.Tensor]] = {}
    with prefix.kept_states(model, [2], kept):
        full = plan.hidden_states(batch)
    with prefix.resumed(model, 2, torch.zeros_like(kept[2][0])):
        assert not torch.equal(plan.hidden_states(batch), full)
    with pytest.raises(RuntimeError, match="cannot resume a batch"), prefix.resumed(model, 2, kept[2][0][:1]):
        plan.hidden_states(batch)
    assert not any("forward" in layer.__dict__ for layer in decoder_layers(model))


def test_a_compiled_or_offloaded_model_is_never_resumed(tokenizer):
    model = _model("llama", len(tokenizer), torch.float32)
    assert prefix.can_resume(model)
    decoder_layers(model)[1].forward = lambda *a, **k: None  # what accelerate's offloading hooks do
    assert not prefix.can_resume(model)
    del decoder_layers(model)[1].forward
    compiled._COMPILED.add(model)  # what compile_layers records
    try:
        assert not prefix.can_resume(model)
    finally:
        compiled._COMPILED.discard(model)


def test_the_shared_prefix_is_the_longest_run_of_one_models_layers():
    params = ["embed.weight", *(f"model.layers.{i}.{w}" for i in range(4) for w in ("q.weight", "mlp.weight")),
              "norm.weight"]
    layer = {i: {f"model.layers.{i}.q.weight", f"model.layers.{i}.mlp.weight"} for i in range(4)}
    emb = {"embed.weight"}
    everything = set(params)
    assert prefix.shared_prefix(params, layer[2], emb, 4) == ("base", 2)  # only layer 2 from the other model
    assert prefix.shared_prefix(params, everything - layer[2], emb, 4) == ("other", 2)  # layer 2 kept from the base
    assert prefix.shared_prefix(params, {"norm.weight"}, emb, 4) == ("base", 4)
    assert prefix.shared_prefix(params, everything - {"norm.weight"}, emb, 4) == ("other", 4)
    assert prefix.shared_prefix(params, emb, emb, 4) == (None, 0)  # the embeddings differ from both models
    assert prefix.shared_prefix(params, everything - emb, emb, 4) == (None, 0)
    assert prefix.shared_prefix(params, {"model.layers.0.q.weight"}, emb, 4) == (None, 0)  # a mixed first layer
    assert prefix.shared_prefix(params, {"model.layers.1.q.weight"}, emb, 4) == ("base", 1)
