"""--compile: decoder layers compiled with torch.compile give eager's numbers, and a wrong or failing compile is
refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lossgap.engine.compiled import check_compiled, compile_layers, decoder_layers
from lossgap.engine.forward import eager
from lossgap.engine.head import OutputHead
from lossgap.engine.plans import make_plan
from lossgap.errors import ModelError, UsageError
from tests.helpers import read_summary, read_tokens, score_run


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch: a shared cache could hit dynamo's recompile limit and fall back to eager,
    which would make a comparison with eager pass for the wrong reason."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize(("arch", "plan", "mask"), [
    pytest.param("llama", "docs", "block", marks=pytest.mark.slow),
    pytest.param("llama", "varlen", "block", marks=pytest.mark.slow),
    pytest.param("llama", "dense", "block", marks=pytest.mark.slow),
    pytest.param("gemma2", "nomask", "causal", marks=pytest.mark.slow),
])
def test_compiled_run_matches_eager(tmp_path, tiny_models, pile_jsonl, arch, plan, mask):
    """A whole run with --compile against the same run eager, token for token (fp32)."""
    kwargs = dict(seq_len=64, batch_size=3, plan=plan, mask=mask, batch_tokens=100)
    ref = read_tokens(score_run(tiny_models[arch], pile_jsonl, tmp_path / "eager", **kwargs).out_dir)
    before = graphs_compiled()
    got = read_tokens(score_run(tiny_models[arch], pile_jsonl, tmp_path / "compiled", compile=True, **kwargs).out_dir)
    assert graphs_compiled() > before  # the layers did run compiled
    assert (ref[["doc_id", "pos", "target"]].values == got[["doc_id", "pos", "target"]].values).all()
    assert np.abs(ref.nll.values - got.nll.values).max() <= 1e-5
    check = read_summary(tmp_path / "compiled")["compile"]
    layer = {"llama": "LlamaDecoderLayer", "gemma2": "Gemma2DecoderLayer"}[arch]
    assert check["layer"] == layer and check["passed"] and check["reference"] == "eager"
    assert check["max_abs_diff"] <= 1e-4 and check["tokens"] > 100


@pytest.mark.slow
def test_compiled_bf16_is_checked_against_float32(tmp_path, llama_dir, pile_jsonl):
    """Below float32 the start check compares compiled and eager layers with a float32 pass, and the run's own fp32
    deviation is measured against eager float32."""
    out = tmp_path / "bf16"
    score_run(llama_dir, pile_jsonl, out, seq_len=64, batch_size=3, dtype="bfloat16", compile=True)
    summary = read_summary(out)
    check = summary["compile"]
    assert check["passed"] and check["reference"] == "float32 eager"
    assert check["eager_max_abs_diff"] > 0 and check["max_abs_diff"] <= 1.5 * check["eager_max_abs_diff"] + 1e-2
    assert summary["fp32_check"]["max_abs_diff"] < 0.5


def wrong_backend(gm, example_inputs):
    """A compiler that returns wrong hidden states: the check must catch it."""
    def run(*args):
        return [o + 0.5 if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o in gm(*args)]
    return run


def failing_backend(gm, example_inputs):
    raise RuntimeError("C++ compile failed: cc1plus not found")


@pytest.mark.parametrize(("backend", "match"), [(wrong_backend, "compiled layers' per-token NLL is"),
                                                (failing_backend, "torch.compile failed on tiny")])
def test_a_wrong_or_failing_compile_is_refused(llama_dir, backend, match):
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    for layer in decoder_layers(model):
        layer.compile(backend=backend, dynamic=True)
    plan = make_plan("docs", model, "block", "restart", 1, 2)
    with pytest.raises(ModelError, match=match) as e:
        check_compiled(plan, OutputHead(model), model.config.vocab_size, "tiny")
    assert "run without --compile" in str(e.value)
    with eager():  # the model itself is untouched: eager still gives its own numbers
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 5, 9]])).logits).all()


def test_compile_layers_is_once_per_model_and_needs_known_layers(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    assert compile_layers(model) == "LlamaDecoderLayer"
    compiled = [layer._compiled_call_impl for layer in decoder_layers(model)]
    assert all(c is not None for c in compiled) and len(compiled) == model.config.num_hidden_layers
    compile_layers(model)
    assert [layer._compiled_call_impl for layer in decoder_layers(model)] == compiled
    model._no_split_modules = []
    with pytest.raises(ModelError, match="cannot find its decoder layers"):
        decoder_layers(model)


def test_compile_with_tensor_parallel_is_refused(llama_dir, pile_jsonl, tmp_path):
    with pytest.raises(UsageError, match="--compile with --tp"):
        score_run(llama_dir, pile_jsonl, tmp_path / "tp", compile=True, tp=True)


def test_compile_needs_a_torch_with_compiler_stances(llama_dir, monkeypatch):
    """torch 2.4-2.5 (which pyproject admits) have no set_stance: --compile is refused, eager runs go on."""
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    monkeypatch.delattr(torch.compiler, "set_stance")
    with pytest.raises(ModelError, match="needs torch 2.6 or newer"):
        compile_layers(model)
    with eager():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 5, 9]])).logits).all()


@pytest.mark.slow
def test_many_plans_in_one_process_stay_compiled(tmp_path, llama_dir, pile_jsonl, caplog):
    """Every decoder layer shares one code object, so each plan, batch-shape class and dtype a process runs adds a
    graph against one recompile limit (dynamo's default, 8): past it layers would run eager with only a log line.
    lossgap raises the limit for its layers; nine and more graphs in one process all stay compiled."""
    caplog.set_level("WARNING", logger="torch._dynamo")
    before = graphs_compiled()
    for dtype in ("float32", "bfloat16"):
        for plan, mask in (("docs", "block"), ("varlen", "block"), ("dense", "block"), ("nomask", "causal")):
            out = tmp_path / f"{plan}-{dtype}"
            score_run(llama_dir, pile_jsonl, out, seq_len=64, batch_size=3, plan=plan, mask=mask, dtype=dtype,
                      batch_tokens=100, compile=True)
            assert read_summary(out)["compile"]["passed"]
    assert graphs_compiled() - before > 8
    assert not [r for r in caplog.records if "recompile_limit" in r.getMessage()]
