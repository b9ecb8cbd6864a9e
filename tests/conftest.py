"""Shared fixtures: a BPE tokenizer trained on standard-library text and tiny seeded models saved to disk."""

from __future__ import annotations

import inspect
import json
import json as _json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARCHS = ("llama", "qwen2", "gemma2")


def stdlib_texts(n: int = 40) -> list[str]:
    """Real text present on any machine with Python: standard-library module sources."""
    import argparse
    import collections
    import dataclasses
    import json as json_mod
    import pathlib
    import textwrap

    texts = []
    for mod in (argparse, collections, dataclasses, json_mod, pathlib, textwrap):
        src = inspect.getsource(mod)
        texts.extend(chunk for chunk in src.split("\n\n\n") if chunk.strip())
    return texts[:n]


@pytest.fixture(scope="session")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(stdlib_texts(200), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def tiny_config(arch: str, vocab_size: int, max_positions: int = 256):
    from transformers import AutoConfig

    common = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
    )
    if arch == "gemma2":
        common.update(head_dim=16, sliding_window=8, final_logit_softcapping=5.0, attn_logit_softcapping=50.0,
                      query_pre_attn_scalar=16)
    return AutoConfig.for_model(arch, **common)


def build_tiny_model(arch: str, tokenizer, folder: Path, max_positions: int = 256) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer), max_positions))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: build_tiny_model(arch, tokenizer, root / arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def llama_dir(tiny_models) -> Path:
    return tiny_models["llama"]


def write_jsonl(path: Path, records: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else _json.dumps(r)) + "\n")
    return path


@pytest.fixture(scope="session")
def pile_records() -> list[dict]:
    """Pile-format records of varied lengths over two domains."""
    texts = stdlib_texts(40)
    records = []
    for i, text in enumerate(texts[:24]):
        cut = text[: 40 + (i * 37) % 400]
        records.append({"text": cut, "meta": {"pile_set_name": "Github" if i % 3 else "StdlibDocs"}})
    return records


@pytest.fixture
def pile_jsonl(tmp_path, pile_records) -> Path:
    return write_jsonl(tmp_path / "pile.jsonl", pile_records)


def read_summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def score_run(model, corpus, out, *, layout="packed", mask="block", seq_len=64, batch_size=2, label_offset=1,
              stride=None, positions=None, add_bos=None, add_eos=True, **run_kwargs):
    """Run lossgap.score with quiet defaults; returns the ScoreResult."""
    from lossgap import CorpusConfig, LayoutConfig, ModelConfig, RunConfig, ScoreConfig, TokenizeConfig, score

    corpus_kwargs = {k: run_kwargs.pop(k) for k in list(run_kwargs) if k in CorpusConfig.__dataclass_fields__}
    model_kwargs = {k: run_kwargs.pop(k) for k in list(run_kwargs) if k in ModelConfig.__dataclass_fields__}
    tokenize_kwargs = {k: run_kwargs.pop(k) for k in list(run_kwargs) if k in TokenizeConfig.__dataclass_fields__}
    cfg = ScoreConfig(
        model=ModelConfig(str(model), **{"dtype": "float32", "device": "cpu", **model_kwargs}),
        corpus=CorpusConfig(str(corpus), **corpus_kwargs),
        tokenize=TokenizeConfig(add_bos=add_bos, add_eos=add_eos, **tokenize_kwargs),
        layout=LayoutConfig(layout, seq_len, stride, mask, positions, label_offset),
        run=RunConfig(str(out), batch_size=batch_size, quiet=True, **run_kwargs),
    )
    return score(cfg)


def read_tokens(out: Path, name: str = "tokens.parquet"):
    import pyarrow.parquet as pq

    return pq.read_table(out / name).to_pandas()
