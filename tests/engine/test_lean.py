"""The lean forwards give the model's own numbers bit for bit, only where they reproduce a module, and leave nothing
on the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lossgap.data.encode import TokenizedDocument
from lossgap.data.layout import collate, packed_rows
from lossgap.engine.lean import gated_mlp_forward, lean_forwards, lean_targets, reproduces, rms_norm_forward
from lossgap.engine.plans import make_plan
from tests.helpers import ARCHS


def _batch(vocab: int, lengths=(40, 70, 25, 90), seq_len: int = 64):
    rng = np.random.default_rng(0)
    docs = [TokenizedDocument(i, "d", f"doc{i}", rng.integers(3, vocab, size=n), n) for i, n in enumerate(lengths)]
    return collate(list(packed_rows(docs, seq_len, 1)), 1, "restart")


def _kinds(model) -> dict[str, int]:
    found = lean_targets(model)
    return {name: sum(f is fn for _, f in found) for name, fn in (("norm", rms_norm_forward),
                                                                  ("mlp", gated_mlp_forward))}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("arch", ARCHS)
def test_a_plan_on_lean_forwards_gives_the_models_own_hidden_states_bit_for_bit(tiny_models, arch, dtype):
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=dtype).eval()
    batch = _batch(model.config.vocab_size)
    plan = make_plan("dense", model, "block", "restart", 1, 4)
    lean = plan.hidden_states(batch)
    plan.lean = False
    own = plan.hidden_states(batch)
    assert torch.equal(lean, own)
    kinds = _kinds(model)
    layers = model.config.num_hidden_layers
    # Llama and Qwen 2: every norm (2 per layer and the final one) and every MLP; Gemma 2's norms scale by 1 + weight
    # and are left alone, its MLP (GELU) is lean
    assert kinds == {"norm": 0 if arch == "gemma2" else 2 * layers + 1, "mlp": layers}


def test_the_lean_forwards_reproduce_llamas_modules_on_activations_of_every_scale(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.bfloat16).eval()
    layer = model.model.layers[0]
    rng = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for scale in (1e-3, 1.0, 300.0):
            x = (torch.randn(3, 17, model.config.hidden_size, generator=rng) * scale).to(torch.bfloat16)
            for module, forward in ((layer.input_layernorm, rms_norm_forward), (layer.mlp, gated_mlp_forward)):
                assert torch.equal(forward(module, x), type(module).forward(module, x))
            norm = layer.input_layernorm  # a float32 input (the float32 check feeds one): a copy, not the input
            wide = x.float()
            assert torch.equal(rms_norm_forward(norm, wide), type(norm).forward(norm, wide))
            assert torch.equal(wide, x.float())


def test_a_module_that_computes_something_else_keeps_its_own_forward(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    norm_class = type(model.model.norm)

    class OnePlusWeightNorm(norm_class):  # the parts of Llama's RMSNorm, Gemma's arithmetic
        def forward(self, hidden):
            h = hidden.float()
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
            return (h * (1.0 + self.weight.float())).to(hidden.dtype)

    model.model.norm.__class__ = OnePlusWeightNorm
    assert not reproduces(model.model.norm, rms_norm_forward)
    found = [m for m, _ in lean_targets(model)]
    assert model.model.norm not in found and model.model.layers[0].input_layernorm in found


def test_nothing_is_left_on_the_model_and_nothing_is_set_while_autograd_records(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    modules = list(model.modules())
    with torch.inference_mode(), lean_forwards(model) as count:
        assert count > 0 and "forward" in model.model.layers[0].mlp.__dict__
    assert not any("forward" in m.__dict__ for m in modules)
    with torch.enable_grad(), lean_forwards(model) as count:
        assert count == 0 and not any("forward" in m.__dict__ for m in modules)
    with torch.inference_mode(), lean_forwards(model, enabled=False) as count:
        assert count == 0


def test_no_probe_runs_under_hooks_and_a_forward_set_on_the_instance_is_kept(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.bfloat16).eval()
    seen = []
    hooks = [layer.mlp.up_proj.register_forward_hook(lambda *args: seen.append(1)) for layer in model.model.layers]
    assert _kinds(model)["mlp"] == 0 and not seen  # not probed while a hook would see the probe
    for hook in hooks:
        hook.remove()
    assert _kinds(model)["mlp"] == model.config.num_hidden_layers
    offloaded = model.model.layers[1].mlp  # accelerate's offloading wraps forward on the instance
    own = offloaded.forward
    offloaded.forward = own
    with torch.inference_mode(), lean_forwards(model):
        assert offloaded.__dict__["forward"] is own
    assert offloaded.__dict__["forward"] is own and offloaded not in [m for m, _ in lean_targets(model)]


def test_compiled_layers_keep_the_forwards_they_were_traced_with(llama_dir):
    from lossgap.engine.compiled import compile_layers

    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    with torch.inference_mode(), lean_forwards(model) as count:
        assert count > 0
    compile_layers(model)  # marks the layers for compilation; nothing compiles until they run
    with torch.inference_mode(), lean_forwards(model) as count:
        assert count == 0
