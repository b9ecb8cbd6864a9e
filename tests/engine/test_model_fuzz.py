"""Fuzzing model files, as tests/test_corpus.py fuzzes corpora: a safetensors file, a GGUF file or a tokenizer.json
cut short or with bits flipped either loads or raises lossgap's own error naming the file. Any other exception (a
traceback for the user) fails."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from lossgap.config import ModelConfig
from lossgap.engine.model import load_model
from lossgap.errors import LossgapError
from tests.hostile_models import gguf_dims_small, write_tiny_gguf

HEAD = 4096  # headers and metadata live here: flips there are the interesting ones

# a damage: ("cut", fraction kept) or ("flip", [(position, bit), ...]) with positions biased to the file's head
flips = st.lists(st.tuples(st.booleans(), st.integers(0, 1 << 40), st.integers(0, 7)), min_size=1, max_size=4)
damage = st.one_of(st.tuples(st.just("cut"), st.floats(0, 1, exclude_max=True)), st.tuples(st.just("flip"), flips))


def damaged(data: bytes, how) -> bytes:
    kind, detail = how
    if kind == "cut":
        return data[: int(len(data) * detail)]
    out = bytearray(data)
    for in_head, position, bit in detail:
        out[position % (min(HEAD, len(out)) if in_head else len(out))] ^= 1 << bit
    return bytes(out)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, llama_dir) -> dict[str, Path]:
    """A copy of the tiny Llama and a tiny GGUF of it, whose files each example overwrites."""
    root = tmp_path_factory.mktemp("fuzz")
    folder = Path(shutil.copytree(llama_dir, root / "llama"))
    (root / "gguf").mkdir()
    return {"folder": folder, "gguf": write_tiny_gguf(llama_dir, root / "gguf" / "tiny.gguf")}


def load_or_explain(target: Path, data: bytes, model: Path, named: str) -> None:
    original = target.read_bytes()
    target.write_bytes(data)
    try:
        load_model(ModelConfig(str(model), device="cpu", dtype="float32"), quiet=True)
    except LossgapError as e:
        assert named in str(e) and e.fix, str(e)
    finally:
        target.write_bytes(original)


# examples: the hypothesis profile's (conftest.py: 10 while developing, 100 in CI); each loads a model: slow
pytestmark = pytest.mark.slow


@given(how=damage)
def test_damaged_safetensors_load_or_explain(workdir, how):
    target = workdir["folder"] / "model.safetensors"
    load_or_explain(target, damaged(target.read_bytes(), how), workdir["folder"], "model.safetensors")


@given(how=damage)
def test_damaged_gguf_loads_or_explains(workdir, how):
    target = workdir["gguf"]
    data = damaged(target.read_bytes(), how)
    probe = target.with_name("probe.gguf")
    probe.write_bytes(data)
    assume(gguf_dims_small(probe, 4096))  # a flipped dimension is a valid, larger model: slow, not broken
    load_or_explain(target, data, target, "tiny.gguf")


@given(how=damage)
def test_damaged_tokenizer_json_loads_or_explains(workdir, how):
    target = workdir["folder"] / "tokenizer.json"
    load_or_explain(target, damaged(target.read_bytes(), how), workdir["folder"], "tokenizer.json")
