"""A GGUF file is parsed once per load, not once per stage (engine/ggufparse.py): the same weights as transformers'
own loading, a changed file parsed again, nothing kept once the model is loaded."""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from lossgap.config import ModelConfig
from lossgap.engine import ggufparse
from lossgap.engine.model import load_model, load_tokenizer
from tests.hostile_models import write_tiny_gguf


def _counting(monkeypatch) -> list[str]:
    import gguf

    parses: list[str] = []
    original = gguf.GGUFReader

    class Counting(original):
        def __init__(self, path, mode="r"):
            parses.append(str(path))
            super().__init__(path, mode)

    monkeypatch.setattr(gguf, "GGUFReader", Counting)
    return parses


def test_a_gguf_file_is_parsed_once_per_load_with_transformers_own_weights(tmp_path, llama_dir, monkeypatch):
    path = write_tiny_gguf(llama_dir, tmp_path / "tiny.gguf")
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    parses = _counting(monkeypatch)  # counted from here: transformers' own load above parsed it four times
    cfg = ModelConfig(str(path), dtype="float32", device="cpu")
    load_tokenizer(cfg)  # the config and the tokenizer: one parse
    assert len(parses) == 1
    loaded = load_model(cfg, quiet=True)  # the config, tokenizer and weights again: from that parse
    assert len(parses) == 1 and not ggufparse._readers  # and the parse is dropped once the model is loaded
    mine, theirs = loaded.model.state_dict(), reference.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    load_model(cfg, quiet=True)
    assert len(parses) == 2


def test_a_changed_gguf_file_is_parsed_again(tmp_path, llama_dir, tokenizer, monkeypatch):
    path = write_tiny_gguf(llama_dir, tmp_path / "tiny.gguf")
    cfg = ModelConfig(str(path), dtype="float32", device="cpu")
    parses = _counting(monkeypatch)
    load_tokenizer(cfg)
    other = tmp_path / "other"  # the same shapes, other weights, written over the file in place
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.save_pretrained(other)
    tokenizer.save_pretrained(other)
    write_tiny_gguf(other, tmp_path / "new.gguf")
    os.replace(tmp_path / "new.gguf", path)
    loaded = load_model(cfg, quiet=True)
    assert len(parses) == 2  # not the stale parse of the old file
    expected = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    assert torch.equal(loaded.model.model.norm.weight, expected.model.norm.weight)
    assert not torch.equal(loaded.model.model.norm.weight, model.model.norm.weight - 1.0)


def test_the_metadata_is_converted_once_per_load_and_each_caller_gets_its_own(tmp_path, llama_dir, monkeypatch):
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    path = write_tiny_gguf(llama_dir, tmp_path / "tiny.gguf")
    original = gguf_utils.load_gguf_checkpoint
    calls: list[bool] = []

    @functools.wraps(original)  # its signature, which the memo reads
    def counting(*args, **kwargs):
        calls.append(bool(kwargs.get("return_tensors", args[1] if len(args) > 1 else False)))
        return original(*args, **kwargs)

    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", counting)
    want = original(str(path), return_tensors=False)
    load_model(ModelConfig(str(path), dtype="float32", device="cpu"), quiet=True)
    assert calls.count(False) == 1 and calls.count(True) == 1  # config, tokenizer, config again: one conversion
    assert not ggufparse._metadata  # dropped with the reader once the model is loaded
    with ggufparse.parsed_once():
        first = gguf_utils.load_gguf_checkpoint(str(path), return_tensors=False)
        first["config"]["vocab_size"] = -1  # a caller editing its dict
        second = gguf_utils.load_gguf_checkpoint(str(path))
    assert second == want and first["config"]["vocab_size"] == -1
    assert gguf_utils.load_gguf_checkpoint is counting  # restored after the block
    ggufparse.forget()


def test_the_parse_reads_a_plain_view_of_the_map_with_ggufs_own_fields_and_tensors(tmp_path, llama_dir):
    import gguf

    path = write_tiny_gguf(llama_dir, tmp_path / "tiny.gguf")
    own = gguf.GGUFReader(path)
    with ggufparse.parsed_once():
        mine = gguf.GGUFReader(path)
    assert isinstance(own.data, np.memmap) and type(mine.data) is np.ndarray  # no memmap code per slice
    assert list(mine.fields) == list(own.fields) and len(own.fields) > 10
    for name, field in own.fields.items():
        other = mine.fields[name]
        assert (other.types, other.data, other.offset) == (field.types, field.data, field.offset), name
        assert all(np.array_equal(a, b) for a, b in zip(other.parts, field.parts, strict=True)), name
    assert [t.name for t in mine.tensors] == [t.name for t in own.tensors] and mine.tensors
    assert all(np.array_equal(a.data, b.data) for a, b in zip(mine.tensors, own.tensors, strict=True))
    ggufparse.forget()


def test_strings_are_decoded_as_transformers_decodes_them_and_other_values_left_to_it():
    from transformers.integrations.ggml import _gguf_parse_value

    fast = ggufparse._strings_decoded(_gguf_parse_value)
    texts = ["", "Ġthe", "é ü ß", "日本語", "<|im_start|>", "\n\t", "🙂"]
    for text in texts:
        raw = np.frombuffer(text.encode(), dtype=np.uint8)
        for types in (8, [8], [9, 8]):
            got, want = fast(raw, types), _gguf_parse_value(raw, types)
            assert got == want == text and type(got) is str
    for value, types in ((np.array([7], dtype=np.uint32), 4), (np.array([0.5], dtype=np.float32), [9, 6]),
                         (np.array([1], dtype=np.uint8), 7), (np.array([3], dtype=np.int64), [11])):
        got, want = fast(value, types), _gguf_parse_value(value, types)
        assert got == want and type(got) is type(want)
    try:
        fast(np.frombuffer(b"ab", dtype=np.uint8), [4, 8])
    except ValueError:  # transformers' own refusal of a non-array pair of types
        pass
    else:
        raise AssertionError("a pair of types not led by the array type must be refused as transformers does")
