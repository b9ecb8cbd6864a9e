"""What a comparison computes is decided before any model loads and then fixed: the explanation plan (frozen, with
what ran kept apart) and the tokenization every model's input gets."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from lossgap.config import CompareConfig, CorpusConfig, ModelConfig, TokenizeConfig
from lossgap.data.encode import SpecialTokens
from lossgap.formats.schema import BITS_PER_BYTE, TOKENS, ExplanationManifest
from lossgap.matrix import SEED_MATRIX, main_configuration, single_configuration
from lossgap.run.comparison import shared_tokenization
from lossgap.run.explanation_plan import ExplanationRecord, plan_explanation
from tests.helpers import tiny_config

MAIN = main_configuration(list(SEED_MATRIX))


def _cfg(models: dict, **kw) -> CompareConfig:
    return CompareConfig(models=list(models.items()), corpus=CorpusConfig("unused.jsonl"),
                         model=ModelConfig("", dtype="float32", device="cpu"), **kw)


def _model_cfgs(models: dict) -> dict:
    return {name: ModelConfig(path, dtype="float32", device="cpu") for name, path in models.items()}


@pytest.fixture(scope="module")
def wide(tmp_path_factory, tokenizer) -> str:
    """A Llama whose output vocabulary is padded beyond the tokenizer's: same ids, other distribution size."""
    folder = tmp_path_factory.mktemp("wide")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("llama", len(tokenizer) + 64)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_the_plan_is_decided_before_any_model_loads_and_is_frozen(llama_dir, wide, tokenizer, monkeypatch):
    monkeypatch.setattr("lossgap.engine.model.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    models = {"base": str(llama_dir), "twin": str(llama_dir), "wide": wide}
    tokenizers = dict.fromkeys(models, tokenizer)
    plan = plan_explanation(_cfg(models), _model_cfgs(models), tokenizers, TOKENS, MAIN)
    assert plan.enabled and plan.configuration == "next-batch-block" and plan.paired == ("twin",)
    assert plan.skipped["wide"].startswith("the output vocabularies differ in size (384 vs 448)")
    assert "twin" not in plan.skipped and plan.memory["needed_bytes"] > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.paired = ("wide",)
    with pytest.raises(TypeError):
        plan.skipped["twin"] = None


def test_the_plan_says_why_nothing_is_paired(llama_dir, tokenizer):
    models = {"base": str(llama_dir), "other": str(llama_dir)}
    tokenizers = dict.fromkeys(models, tokenizer)
    cfgs = _model_cfgs(models)
    by_bytes = plan_explanation(_cfg(models), cfgs, tokenizers, BITS_PER_BYTE, MAIN)
    assert by_bytes.paired == () and "tokenizers differ" in by_bytes.skipped["other"] and by_bytes.memory is None
    shifted = plan_explanation(_cfg(models), cfgs, tokenizers, TOKENS, single_configuration(2, "packed", "block"))
    assert shifted.skipped == {"other": "no next-token configuration was scored"}
    off = plan_explanation(_cfg(models, explain=False), cfgs, tokenizers, TOKENS, MAIN)
    assert not off.enabled and off.paired == () and off.skipped == {}


def test_the_manifest_is_the_plan_and_the_record(llama_dir, tokenizer):
    models = {"base": str(llama_dir), "other": str(llama_dir)}
    cfg = _cfg(models, tokenize=TokenizeConfig(chat_context=False))
    plan = plan_explanation(cfg, _model_cfgs(models), dict.fromkeys(models, tokenizer), TOKENS, MAIN)
    record = ExplanationRecord(pairs={"other": "pairs/other.parquet"}, vocab={"base": "vocab/base.parquet"})
    manifest = plan.manifest(record)
    assert list(manifest) == list(ExplanationManifest.__annotations__)  # the order compare.json has always had
    assert manifest["pairs"] == {"other": "pairs/other.parquet"} and manifest["chat_user_turn"] is None
    assert not plan.chat and manifest["chat_runs"] == {}


def test_every_model_gets_the_baselines_bos_and_eos_in_a_token_level_comparison(tokenizer):
    cfg = _cfg({"base": "a", "other": "b"}, tokenize=TokenizeConfig(chat_context=True))
    tokens = shared_tokenization(cfg, tokenizer, TOKENS)
    assert (tokens.bos_id, tokens.eos_id, tokens.add_bos, tokens.add_eos) == (1, 2, True, True)
    assert not tokens.chat_context  # the configurations score the raw text; the chat runs add their template
    assert SpecialTokens(tokens.bos_id, tokens.eos_id) == SpecialTokens(tokenizer.bos_token_id, tokenizer.eos_token_id)
    by_bytes = shared_tokenization(cfg, tokenizer, BITS_PER_BYTE)  # each model's own tokenizer decides
    assert by_bytes.bos_id is None and by_bytes.add_bos is None and not by_bytes.chat_context
