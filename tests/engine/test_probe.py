"""The mask probe trusts plans that keep documents apart and refuses ones that silently ignore the mask."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from lossgap.engine.head import OutputHead
from lossgap.engine.plans import DensePlan, DocsPlan, NoMaskPlan
from lossgap.engine.probe import probe_mask, require_probe
from lossgap.errors import ModelError, PlanError
from tests.helpers import ARCHS
from tests.hostile_models import copy_model, scale_weights, zero_weights


def load(folder, attn):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=attn).eval()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_dense_plan_passes_the_probe(tiny_models, arch, attn):
    if arch == "gemma2" and attn == "sdpa":
        pytest.skip("transformers refuses sdpa for Gemma 2 (soft-capped attention)")
    model = load(tiny_models[arch], attn)
    head = OutputHead(model)
    for plan_cls, mask, positions in ((DensePlan, "block", "restart"), (DensePlan, "causal", "continuous"),
                                      (DocsPlan, "block", "restart"), (NoMaskPlan, "causal", "continuous")):
        result = probe_mask(plan_cls(model, mask, positions, 1), head, model.config.vocab_size)
        assert result.passed, result
        if mask == "block":
            assert result.max_logit_shift <= 1e-5
        else:
            assert result.max_logit_shift > 1e-2
        require_probe(result, "tiny", attn)


class BooleanMaskPlan(DensePlan):
    """The mistake DESIGN.md measured: a boolean mask handed to eager attention, which adds it as 0/1."""

    def attention_mask(self, batch):
        from lossgap.engine.masks import allowed_pairs

        return allowed_pairs(batch.segment_ids, self.mask)[:, None]


def test_probe_refuses_a_boolean_mask_under_eager_attention(llama_dir):
    model = load(llama_dir, "eager")
    result = probe_mask(BooleanMaskPlan(model, "block", "restart", 1), OutputHead(model), model.config.vocab_size)
    assert not result.passed and result.max_logit_shift > 1e-2
    with pytest.raises(PlanError, match="under the block mask a document's logits moved"):
        require_probe(result, "tiny-llama", "eager")


def test_probe_refuses_restarting_positions_without_a_mask(llama_dir):
    """DESIGN.md: with no mask and position ids restarting at 0, transformers builds a document mask itself, so a
    'causal' run would silently keep documents apart. The probe catches it."""
    model = load(llama_dir, "sdpa")
    result = probe_mask(NoMaskPlan(model, "causal", "restart", 1), OutputHead(model), model.config.vocab_size)
    assert not result.passed and result.max_logit_shift < 1e-4
    assert result.input_spread > 1  # the model is sound: the attention is what kept the documents apart
    with pytest.raises(PlanError, match="under the causal mask a document's logits did not move") as e:
        require_probe(result, "tiny-llama", "sdpa")
    assert "--attn" in e.value.fix


def test_a_model_whose_logits_ignore_the_input_is_called_degenerate(llama_dir, tmp_path):
    """All-zero weights give the same logits everywhere: the causal probe cannot pass, and the attention is not why."""
    model = load(zero_weights(copy_model(llama_dir, tmp_path / "zero")), "sdpa")
    result = probe_mask(NoMaskPlan(model, "causal", "continuous", 1), OutputHead(model), model.config.vocab_size)
    assert not result.passed and result.input_spread == 0
    with pytest.raises(ModelError, match="logits do not depend on its input") as e:
        require_probe(result, "zero-llama", "sdpa")
    assert "degenerate" in str(e.value) and "--attn" not in str(e.value)


def test_inf_logits_in_float16_are_called_an_overflow(llama_dir, tmp_path):
    folder = scale_weights(copy_model(llama_dir, tmp_path / "big"), 300, ("proj.weight",))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float16).eval()
    result = probe_mask(DensePlan(model, "block", "restart", 1), OutputHead(model), model.config.vocab_size)
    assert not result.passed and not math.isfinite(result.max_logit_shift)
    with pytest.raises(ModelError, match="inf/NaN in the model's logits on the mask probe's two documents in "
                                         "float16") as e:
        require_probe(result, "big-llama", "sdpa")
    assert "overflow float16's range" in str(e.value) and "--dtype bfloat16" in e.value.fix
