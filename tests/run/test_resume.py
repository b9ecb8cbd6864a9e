"""Surviving failures: kill -9 and resume gives the same files; SIGTERM stops cleanly; a changed input refuses to
resume; an out-of-memory batch is retried in halves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lossgap.cli import main
from tests.helpers import read_summary, score_run, stdlib_texts, write_jsonl


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    """Enough documents for a few hundred small windows, so a kill lands mid-run."""
    texts = stdlib_texts(40)
    records = [{"text": texts[i % len(texts)][: 200 + 13 * i % 500], "meta": {"pile_set_name": f"d{i % 3}"}}
               for i in range(200)]
    return write_jsonl(tmp_path_factory.mktemp("big") / "big.jsonl", records)


def _cli(model, corpus, out, *extra):
    return [sys.executable, "-m", "lossgap", "score", "--model", str(model), "--corpus", str(corpus), "--out",
            str(out), "--seq-len", "64", "--batch-size", "2", "--window-tokens", "256", "--device", "cpu",
            "--dtype", "float32", "--quiet", *extra]


def _wait_for_shards(out, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        shards = list((out / "shards").glob("window-*.parquet")) if (out / "shards").exists() else []
        if len(shards) >= n:
            return len(shards)
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be interrupted: {proc.stderr.read()}")
        time.sleep(0.02)
    pytest.fail("no shards appeared")


def _same_tokens(a, b):
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.schema.remove_metadata() == tb.schema.remove_metadata()
    assert ta.equals(tb)


@pytest.mark.slow
def test_kill_9_then_resume_gives_identical_files(tmp_path, llama_dir, big_corpus):
    reference = tmp_path / "reference"
    subprocess.run(_cli(llama_dir, big_corpus, reference), check=True, timeout=300)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(llama_dir, big_corpus, out), stderr=subprocess.PIPE, text=True)
    _wait_for_shards(out, 4, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "tokens.parquet").exists()
    done = len(list((out / "shards").glob("window-*.parquet")))
    # without --resume the folder is refused; with it the run continues from the finished windows
    refused = subprocess.run(_cli(llama_dir, big_corpus, out), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    subprocess.run(_cli(llama_dir, big_corpus, out, "--resume"), check=True, timeout=300)
    _same_tokens(reference / "tokens.parquet", out / "tokens.parquet")
    assert pq.read_table(reference / "documents.parquet").equals(pq.read_table(out / "documents.parquet"))
    summary = read_summary(out)
    assert summary["complete"] and summary["windows_resumed"] >= done - 1 and not (out / "shards").exists()


@pytest.mark.slow
def test_sigterm_finishes_the_window_and_exits_resumable(tmp_path, llama_dir, big_corpus):
    out = tmp_path / "term"
    proc = subprocess.Popen(_cli(llama_dir, big_corpus, out), stderr=subprocess.PIPE, text=True)
    _wait_for_shards(out, 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "stopped by SIGTERM" in err and "--resume" in err
    assert "Traceback" not in err
    summary = read_summary(out)
    assert summary["complete"] is False and pq.read_table(out / "tokens.parquet.partial").num_rows > 0
    subprocess.run(_cli(llama_dir, big_corpus, out, "--resume"), check=True, timeout=300)
    assert read_summary(out)["complete"]


def _interrupted_at_window(monkeypatch, args, window: int = 1) -> None:
    """Run `lossgap score` until it writes `window`'s shard into a full disk: the finished shards before it and the
    manifest remain (exit 1), as after a real interruption."""
    import errno

    from lossgap.run.shards import ShardStore

    original = ShardStore.write

    def full_from_window(self, w, table):
        if w >= window:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, w, table)

    monkeypatch.setattr(ShardStore, "write", full_from_window)
    assert main(args) == 1
    monkeypatch.setattr(ShardStore, "write", original)


def test_resume_refuses_changed_inputs(tmp_path, llama_dir, pile_jsonl, capsys, monkeypatch):
    out = tmp_path / "r"
    base = ["score", "--model", str(llama_dir), "--corpus", str(pile_jsonl), "--out", str(out), "--seq-len", "64",
            "--window-tokens", "256", "--device", "cpu", "--dtype", "float32", "--quiet"]
    _interrupted_at_window(monkeypatch, base)  # one finished window and the manifest stay
    capsys.readouterr()
    assert main([*base, "--seq-len", "48", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume: the config changed since the interrupted run (config: layout.seq_len)" in err
    with open(pile_jsonl, "a") as f:
        f.write('{"text": "one more document"}\n')
    assert main([*base, "--resume"]) == 2
    assert "the corpus changed" in capsys.readouterr().err
    assert (out / "shards" / "window-00000000.parquet").exists()  # refusing deleted nothing


def test_out_of_memory_batches_are_retried_in_halves(tmp_path, llama_dir, pile_jsonl, monkeypatch):
    from lossgap.engine import forward as score_mod  # the runner calls forward.forward_batches per batch

    ref = score_run(llama_dir, pile_jsonl, tmp_path / "ref", seq_len=64, batch_size=4, plan="dense")
    original = score_mod.forward_batches

    def small_batches_only(plan, head, batches, metrics):
        if batches[0].input_ids.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(plan, head, batches, metrics)

    monkeypatch.setattr(score_mod, "forward_batches", small_batches_only)
    res = score_run(llama_dir, pile_jsonl, tmp_path / "oom", seq_len=64, batch_size=4, plan="dense")
    assert res.summary["oom_retries"] > 0
    a, b = pq.read_table(ref.out_dir / "tokens.parquet"), pq.read_table(res.out_dir / "tokens.parquet")
    assert np.abs(a.column("nll").to_numpy() - b.column("nll").to_numpy()).max() <= 1e-5


def test_nan_loss_stops_the_run_naming_the_document(tmp_path, llama_dir, pile_jsonl, monkeypatch, capsys):
    from lossgap.engine import forward as score_mod
    original = score_mod.forward_batches

    def nan_in_doc_5(plan, head, batches, metrics):
        stats = original(plan, head, batches, metrics)
        for batch, columns in zip(batches, stats, strict=True):
            columns["nll"][batch.doc_ids == 5] = np.nan
        return stats

    monkeypatch.setattr(score_mod, "forward_batches", nan_in_doc_5)
    code = main(["score", "--model", str(llama_dir), "--corpus", str(pile_jsonl), "--out", str(tmp_path / "r"),
                 "--seq-len", "64", "--window-tokens", "256", "--device", "cpu", "--dtype", "float32", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "non-finite loss" in err and "pile.jsonl:6 (document 5)" in err
    assert read_summary(tmp_path / "r")["complete"] is False


def test_bf16_resume_gives_the_clean_runs_bytes(tmp_path, llama_dir, pile_jsonl, capsys, monkeypatch):
    """A resumed bf16 run scores its first batch in a later window: it must equal the clean run bit for bit (the
    float32 check of a process's first batch used to cast rotary buffers to bf16 for every batch after it)."""

    def args(out):
        return ["score", "--model", str(llama_dir), "--corpus", str(pile_jsonl), "--out", str(out), "--seq-len", "64",
                "--batch-size", "2", "--layout", "packed", "--mask", "block", "--window-tokens", "256",
                "--device", "cpu", "--dtype", "bfloat16", "--quiet"]

    assert main(args(tmp_path / "clean")) == 0
    _interrupted_at_window(monkeypatch, args(tmp_path / "resumed"), window=2)
    assert main([*args(tmp_path / "resumed"), "--resume"]) == 0
    capsys.readouterr()
    clean, resumed = read_summary(tmp_path / "clean"), read_summary(tmp_path / "resumed")
    assert clean["dtype"] == "bfloat16" and clean["fp32_check"]["tokens"] > 0 and resumed["windows_resumed"] == 2
    assert clean["windows"] > 3
    _same_tokens(tmp_path / "clean" / "tokens.parquet", tmp_path / "resumed" / "tokens.parquet")


def _rewrite_keeping_times(path, data: bytes):
    """Replace a file's bytes in place and set its modification time back, as `cp -p` over it would."""
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_resume_refuses_other_weights_of_the_same_size(tmp_path, llama_dir, pile_jsonl, capsys, monkeypatch):
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(llama_dir, model)
    out = tmp_path / "r"
    base = ["score", "--model", str(model), "--corpus", str(pile_jsonl), "--out", str(out), "--seq-len", "64",
            "--window-tokens", "256", "--device", "cpu", "--dtype", "float32", "--quiet"]
    _interrupted_at_window(monkeypatch, base)
    weights = model / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1.0  # another checkpoint: same names, shapes and file size
    other = tmp_path / "other.safetensors"
    save_file(tensors, other, metadata={"format": "pt"})
    _rewrite_keeping_times(weights, other.read_bytes())
    capsys.readouterr()
    assert main([*base, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "the model changed since the interrupted run" in err and "model.safetensors" in err
    assert (out / "shards" / "window-00000000.parquet").exists()


def test_resume_refuses_a_same_length_edit_in_the_middle_of_the_corpus(tmp_path, llama_dir, capsys, monkeypatch):
    texts = stdlib_texts(40)
    corpus = write_jsonl(tmp_path / "big.jsonl", [{"text": texts[i % 40][:300]} for i in range(300)])
    out = tmp_path / "r"
    base = ["score", "--model", str(llama_dir), "--corpus", str(corpus), "--out", str(out), "--seq-len", "64",
            "--window-tokens", "256", "--device", "cpu", "--dtype", "float32", "--quiet"]
    _interrupted_at_window(monkeypatch, base)
    data = bytearray(corpus.read_bytes())
    middle = data.index(b"the", len(data) // 2)
    data[middle:middle + 3] = b"THE"
    _rewrite_keeping_times(corpus, bytes(data))
    capsys.readouterr()
    assert main([*base, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "the corpus changed since the interrupted run" in err and "big.jsonl" in err


def test_a_second_run_on_a_locked_out_is_refused(tmp_path, llama_dir, pile_jsonl, capsys):
    from lossgap.run.lock import OutLocks

    out = tmp_path / "busy"
    args = ["score", "--model", str(llama_dir), "--corpus", str(pile_jsonl), "--out", str(out), "--seq-len", "64",
            "--device", "cpu", "--dtype", "float32", "--quiet"]
    with OutLocks([out]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"--out {out} is in use by another lossgap run (process {os.getpid()}" in err
        assert "Traceback" not in err and not (out / "shards").exists() and not (out / "summary.json").exists()
    assert main(args) == 0  # the lock ends with its holder


@pytest.mark.slow
def test_two_runs_started_together_on_one_out(tmp_path, llama_dir, big_corpus):
    """One of them scores, the other is refused naming the folder; the files are the first run's alone."""
    out = tmp_path / "shared"
    first = subprocess.Popen(_cli(llama_dir, big_corpus, out), stderr=subprocess.PIPE, text=True)
    _wait_for_shards(out, 1, first)
    os.kill(first.pid, signal.SIGSTOP)  # still running, however fast the machine: the second starts meanwhile
    try:
        second = subprocess.run(_cli(llama_dir, big_corpus, out, "--overwrite"), capture_output=True, text=True,
                                timeout=300)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=300) == 0
    assert second.returncode == 2 and f"--out {out} is in use by another lossgap run (process {first.pid}" in \
        second.stderr
    reference = tmp_path / "reference"
    subprocess.run(_cli(llama_dir, big_corpus, reference), check=True, timeout=300)
    _same_tokens(reference / "tokens.parquet", out / "tokens.parquet")


def test_a_shard_of_another_run_is_never_merged_even_without_resume(tmp_path):
    import pyarrow as pa

    from lossgap.formats.paths import RunFiles
    from lossgap.run.shards import ShardStore

    table = pa.table({"x": [1, 2, 3]})
    ours = ShardStore(RunFiles(tmp_path / "run"), {"config": {"model": "a"}}, resume=False)
    foreign = ShardStore(RunFiles(tmp_path / "run"), {"config": {"model": "b"}}, resume=False, main=False)
    foreign.write(3, table)  # another process writes window 3 into our folder
    assert not ours.done(3)
    ours.write(3, table)
    assert ours.done(3) and ours.read(3).equals(table)
