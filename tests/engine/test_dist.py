"""torchrun data parallel: two gloo processes on the CPU write the same files as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest


def _score(args, nproc, env):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = (launcher if nproc > 1 else [sys.executable]) + ["-m", "lossgap", "score", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("plan,dtype", [("docs", "float32"), ("dense", "float32"), ("packed", "bfloat16")])
def test_two_gloo_processes_equal_one(tmp_path, llama_dir, pile_jsonl, plan, dtype):
    """bf16 too: rank 1's first batch lies in window 1, which one process scores after its float32 check."""
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the same kernels in every process: bitwise comparable
    plan_args = ["--layout", "packed", "--mask", "block"] if plan == "packed" else ["--plan", plan]
    common = ["--model", llama_dir, "--corpus", pile_jsonl, "--seq-len", 64, "--batch-size", 2, *plan_args,
              "--window-tokens", 300, "--device", "cpu", "--dtype", dtype, "--quiet"]
    one = _score([*common, "--out", tmp_path / "one"], 1, env)
    two = _score([*common, "--out", tmp_path / "two"], 2, env)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    a, b = pq.read_table(tmp_path / "one" / "tokens.parquet"), pq.read_table(tmp_path / "two" / "tokens.parquet")
    assert a.num_rows > 1000 and a.equals(b)
    assert pq.read_table(tmp_path / "one" / "documents.parquet").equals(
        pq.read_table(tmp_path / "two" / "documents.parquet"))
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (s1["world_size"], s2["world_size"]) == (1, 2) and s2["windows"] > 2 and s1["dtype"] == dtype
    assert s1["mean_nll"] == s2["mean_nll"] and s1["input_tokens"] == s2["input_tokens"]
    assert two.stdout.count("mean NLL") == 1  # rank 0 alone reports


@pytest.mark.slow
def test_tensor_parallel_over_two_gloo_processes_matches_one(tmp_path, llama_dir, pile_jsonl):
    """--tp shards every layer over the processes (tp_plan='auto'); numbers match a one-process run."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = ["--model", llama_dir, "--corpus", pile_jsonl, "--seq-len", 64, "--batch-size", 2,
              "--device", "cpu", "--dtype", "float32", "--quiet"]
    one = _score([*common, "--out", tmp_path / "one"], 1, env)
    two = _score([*common, "--out", tmp_path / "tp", "--tp"], 2, env)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    a, b = pq.read_table(tmp_path / "one" / "tokens.parquet"), pq.read_table(tmp_path / "tp" / "tokens.parquet")
    assert a.select(["doc_id", "pos", "target"]).equals(b.select(["doc_id", "pos", "target"]))
    diff = abs(a.column("nll").to_numpy() - b.column("nll").to_numpy()).max()
    assert diff <= 1e-4
    assert json.loads((tmp_path / "tp" / "summary.json").read_text())["input_tokens"] == \
        json.loads((tmp_path / "one" / "summary.json").read_text())["input_tokens"]


def test_device_map_loads_and_scores(tmp_path, llama_dir, pile_jsonl):
    from tests.helpers import read_tokens, score_run

    ref = read_tokens(score_run(llama_dir, pile_jsonl, tmp_path / "ref", seq_len=64).out_dir)
    got = read_tokens(score_run(llama_dir, pile_jsonl, tmp_path / "map", seq_len=64, device_map="cpu").out_dir)
    assert (abs(ref.nll.values - got.nll.values)).max() <= 1e-6
