"""Shared fixtures: a BPE tokenizer trained on standard-library text, tiny seeded models saved to disk, Pile-format
records; the hypothesis profiles (dev: few examples; ci: the full run). Helpers the tests import: helpers.py."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers import ARCHS, build_tiny_model, stdlib_texts, write_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the content-hash cache of run/fingerprints.py: one per test session, never the user's
os.environ.setdefault("LOSSGAP_CACHE_DIR", tempfile.mkdtemp(prefix="lossgap-test-cache-"))

# Property tests: few examples while developing, the full run in CI (.ci/run sets HYPOTHESIS_PROFILE=ci).
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("dev", settings.get_profile("ci"), max_examples=10)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


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


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: build_tiny_model(arch, tokenizer, root / arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def llama_dir(tiny_models) -> Path:
    return tiny_models["llama"]


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
