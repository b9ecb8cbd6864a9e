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


def test_the_reads_before_each_layer_are_recorded_from_the_pass(tokenizer):
    """Llama with tied embeddings: before layer b it has read the embeddings and every parameter of layers 0..b-1;
    the final norm (after the last layer) is in none of the sets."""
    config = tiny_config("llama", len(tokenizer))
    config.num_hidden_layers, config.tie_word_embeddings = LAYERS, True
    model = AutoModelForCausalLM.from_config(config).eval()
    plan = make_plan("varlen", model, "block", "restart", 1, 4)
    reads: list[set[str]] = []
    with plan.attention(), prefix.recorded_reads(model, reads):
        plan.hidden_states(_batch(model.config.vocab_size))
        plan.hidden_states(_batch(model.config.vocab_size))  # a second pass adds nothing
    layer = [{n for n, _ in model.named_parameters() if f"layers.{i}." in n} for i in range(LAYERS)]
    assert reads == [{"model.embed_tokens.weight"}.union(*layer[:b]) for b in range(LAYERS + 1)]
    with plan.attention():
        plan.hidden_states(_batch(model.config.vocab_size))  # the hooks are gone
    assert len(reads) == LAYERS + 1


def test_the_shared_prefix_is_the_longest_run_of_reads_from_one_model():
    emb, norm = "embed.weight", "norm.weight"
    layer = [frozenset({f"layers.{i}.q.weight", f"layers.{i}.mlp.weight"}) for i in range(4)]
    reads = [{emb}.union(*layer[:b]) for b in range(5)]
    everything = frozenset({emb, norm}.union(*layer))
    assert prefix.shared_prefix(reads, layer[2]) == ("base", 2)  # only layer 2 from the other model
    assert prefix.shared_prefix(reads, everything - layer[2]) == ("other", 2)  # layer 2 kept from the baseline
    assert prefix.shared_prefix(reads, frozenset({norm})) == ("base", 4)
    assert prefix.shared_prefix(reads, everything - {norm}) == ("other", 4)
    assert prefix.shared_prefix(reads, frozenset({emb})) == (None, 0)  # the embeddings differ from both models
    assert prefix.shared_prefix(reads, everything - {emb}) == (None, 0)
    assert prefix.shared_prefix(reads, frozenset({"layers.0.q.weight"})) == (None, 0)  # a mixed first layer
    assert prefix.shared_prefix(reads, frozenset({"layers.1.q.weight"})) == ("base", 1)
    # a parameter read before the first layer that is not named as an embedding (OPT's project_in), taken with the
    # final norm: no resume, since the layers' input is neither model's
    odd = [r | {"project_in.weight"} for r in reads]
    assert prefix.shared_prefix(odd, frozenset({norm, "project_in.weight"})) == (None, 0)
