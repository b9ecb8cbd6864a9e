"""What a comparison computes is decided before any model loads and then fixed: the explanation plan (frozen, with
what ran kept apart) and the tokenization every model's input gets."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from lossgap.config import CompareConfig, CorpusConfig, LayoutConfig, ModelConfig, TokenizeConfig
from lossgap.data.encode import SpecialTokens
from lossgap.errors import ModelError, UsageError
from lossgap.formats.schema import BITS_PER_BYTE, TOKENS, ExplanationManifest
from lossgap.matrix import SEED_MATRIX, main_configuration, single_configuration
from lossgap.run.comparison import shared_tokenization
from lossgap.run.explanation_plan import ExplanationRecord, plan_explanation
from tests.helpers import tiny_config

MAIN = main_configuration(list(SEED_MATRIX))


def _cfg(models: dict, **kw) -> CompareConfig:
    return CompareConfig(models=list(models.items()), corpus=CorpusConfig("unused.jsonl"),
                         model=ModelConfig("", dtype="float32", device="cpu"), **kw)


def _chat_cfg(models: dict, **tokenize) -> CompareConfig:
    """--chat-context (rows of 128, room for the prefix in the tiny models' 256 positions)."""
    return _cfg(models, tokenize=TokenizeConfig(chat_context=True, **tokenize), layout=LayoutConfig(seq_len=128))


def _model_cfgs(models: dict) -> dict:
    return {name: ModelConfig(path, dtype="float32", device="cpu") for name, path in models.items()}


@pytest.fixture(scope="module")
def bare_tokenizer(tokenizer):
    """The conftest tokenizer without BOS or EOS."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, pad_token="<pad>")


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


def _with_template(tokenizer, template: str, special: list[str] = ()):
    tok = copy.deepcopy(tokenizer)
    if special:
        tok.add_special_tokens({"additional_special_tokens": list(special)})
    tok.chat_template = template
    return tok


CHATML = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def test_the_end_of_turn_token_is_planned_and_recorded_before_any_model_loads(llama_dir, tokenizer, monkeypatch):
    monkeypatch.setattr("lossgap.engine.model.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    models = {"base": str(llama_dir), "other": str(llama_dir)}
    tokenizers = {"base": tokenizer, "other": _with_template(tokenizer, CHATML, ["<|im_start|>", "<|im_end|>"])}
    cfg = _chat_cfg(models, chat_end_of_turn=True)
    plan = plan_explanation(cfg, _model_cfgs(models), tokenizers, TOKENS, MAIN)
    manifest = plan.manifest(ExplanationRecord())
    assert manifest["chat_end_of_turn"] is True and manifest["chat_end_of_turn_ids"] == {"other": 385}
    off = plan_explanation(_chat_cfg(models), _model_cfgs(models), tokenizers, TOKENS, MAIN).manifest(
        ExplanationRecord())
    assert off["chat_end_of_turn"] is False and off["chat_end_of_turn_ids"] == {}
    tokens = shared_tokenization(cfg, tokenizer, TOKENS)  # the configurations end with the EOS, as the raw text
    assert not tokens.chat_end_of_turn and not tokens.chat_context and tokens.eos_id == 2


def test_a_template_without_an_end_of_turn_token_or_documents_without_eos_are_refused_before_loading(
        llama_dir, tokenizer, bare_tokenizer, monkeypatch):
    monkeypatch.setattr("lossgap.engine.model.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    models = {"base": str(llama_dir), "other": str(llama_dir)}
    cfg = _chat_cfg(models, chat_end_of_turn=True)
    plain = {"base": tokenizer, "other": _with_template(tokenizer, "{% for m in messages %}{{ m['content'] }}\n"
                                                                   "{% endfor %}")}
    with pytest.raises(ModelError, match=r"other \(its chat template\): the chat template puts '\\n', which does "
                                         "not begin with a special token, after the assistant's reply") as refused:
        plan_explanation(cfg, _model_cfgs(models), plain, TOKENS, MAIN)
    assert "drop --chat-end-of-turn" in refused.value.fix
    no_eos = {"base": bare_tokenizer, "other": _with_template(tokenizer, CHATML, ["<|im_start|>", "<|im_end|>"])}
    with pytest.raises(UsageError, match="the documents' tokenizer defines no EOS") as refused:
        plan_explanation(cfg, _model_cfgs(models), no_eos, TOKENS, MAIN)
    assert "--eos-id" in refused.value.fix


@pytest.mark.parametrize(("tokenize", "says"), [
    (TokenizeConfig(chat_end_of_turn=True), "--chat-end-of-turn applies to chat-formatted documents only"),
    (TokenizeConfig(chat_context=True, chat_end_of_turn=True, add_eos=False), "with --no-eos there is none to replace"),
], ids=["no-chat-context", "no-eos"])
def test_the_end_of_turn_option_needs_chat_context_and_an_eos(tokenize, says):
    with pytest.raises(UsageError, match=says):
        _cfg({"base": "a", "other": "b"}, tokenize=tokenize).validate()
