"""Model files as the command line meets them: a pickled checkpoint refused in one whole, readable message, and
--quiet silencing every bar that loading draws (the GGUF conversion's too)."""

from __future__ import annotations

import argparse

import torch

from lossgap.cli import main
from tests.helpers import run_cli
from tests.hostile_models import copy_model, to_bin, write_tiny_gguf


def test_cli_a_checkpoint_with_pickled_objects_is_refused_whole(tmp_path, llama_dir, pile_jsonl, capsys):
    """Before: '... (UnpicklingError: Weights only load failed. This file can still be loaded, to do so you have two
    options, \\x1b[1mdo those steps only if you trust the source of the checkpoint\\x1b[0m.)': torch's warning cut in
    the middle, with terminal escape codes, under a fix about complete downloads."""
    model = copy_model(llama_dir, tmp_path / "pickled")
    path = to_bin(model)
    weights = torch.load(path)
    weights["training_args"] = argparse.Namespace(lr=1e-4)
    torch.save(weights, path)
    code, _, err = run_cli(capsys, "--model", model, "--corpus", pile_jsonl, "--out", tmp_path / "o")
    assert code == 1, err
    assert f"{path}: refused: the checkpoint holds pickled Python objects besides tensors (argparse.Namespace)" in err
    assert "unpickling them runs code from the file" in err and "weights_only=False" in err and "safetensors" in err
    assert "\x1b" not in err and "internal error" not in err and err.count("lossgap: ") == 1


def test_cli_quiet_silences_the_gguf_conversion_bar(tmp_path, llama_dir, pile_jsonl, capsys):
    from transformers.utils import logging as hf_logging

    gguf = write_tiny_gguf(llama_dir, tmp_path / "tiny.gguf")
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()  # as in a fresh process: an earlier --quiet run in this one turned bars off
    try:
        argv = ["score", "--model", gguf, "--corpus", pile_jsonl, "--device", "cpu", "--dtype", "float32",
                "--seq-len", "64", "--max-docs", "2"]
        assert main([*map(str, argv), "--out", str(tmp_path / "loud")]) == 0
        assert "de-quantizing GGUF tensors" in capsys.readouterr().err  # the bar this test is about
        code, _, err = run_cli(capsys, "--model", gguf, "--corpus", pile_jsonl, "--out", tmp_path / "quiet",
                               "--seq-len", 64, "--max-docs", 2)
        assert code == 0 and "GGUF" not in err and "%|" not in err, err
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()
