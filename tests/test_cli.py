"""The command line: results on success; on bad input one readable message, a non-zero exit, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.helpers import read_summary, run_cli, write_jsonl


def test_score_prints_results_and_writes_files(capsys, tmp_path, llama_dir, pile_jsonl):
    code, out, err = run_cli(capsys, "--model", llama_dir, "--corpus", pile_jsonl, "--out", tmp_path / "r",
                             "--seq-len", 64, "--batch-size", 4)
    assert code == 0, err
    s = read_summary(tmp_path / "r")
    assert f"mean NLL {s['mean_nll']:.4f} nats/token" in out
    assert f"perplexity {s['perplexity']:.3f}" in out
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"tokens.parquet", "documents.parquet", "summary.json",
                                                          ".lossgap.lock"}


@pytest.mark.slow
def test_progress_bar_goes_to_stderr(tmp_path, llama_dir, pile_jsonl):
    proc = subprocess.run(
        [sys.executable, "-m", "lossgap", "score", "--model", str(llama_dir), "--corpus", str(pile_jsonl),
         "--out", str(tmp_path / "r"), "--seq-len", "64", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "100%" in proc.stderr and "tok/s" in proc.stderr
    assert "tokens/s; results in" in proc.stdout


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"text": "ok", "meta": {', "not valid JSON"),
        ('{"content": "no text field"}', "no field 'text'"),
        ('{"text": "   "}', "empty document"),
        ('{"text": 12}', "not a string"),
        ('["text"]', "expected a JSON object"),
    ],
)
def test_bad_line_fails_with_file_and_line(capsys, tmp_path, llama_dir, pile_records, line, reason):
    corpus = write_jsonl(tmp_path / "bad.jsonl", [*pile_records[:3], line, *pile_records[3:6]])
    code, _, err = run_cli(capsys, "--model", llama_dir, "--corpus", corpus, "--out", tmp_path / "r")
    assert code == 1
    assert "bad.jsonl:4: " in err and reason in err and "--on-bad-line skip" in err
    # finished work is kept: the documents before the bad line were scored and written
    s = read_summary(tmp_path / "r")
    assert s["complete"] is False and reason in s["error"]
    assert pq.read_table(tmp_path / "r" / "tokens.parquet.partial").num_rows > 0

    code, _, err = run_cli(capsys, "--model", llama_dir, "--corpus", corpus, "--out", tmp_path / "s",
                           "--on-bad-line", "skip")
    assert code == 0, err
    s = read_summary(tmp_path / "s")
    assert s["corpus"]["bad_records_skipped"] == 1 and reason in s["corpus"]["bad_records"][0]
    assert s["n_documents"] == 6


def test_invalid_utf8_names_the_line(capsys, tmp_path, llama_dir):
    corpus = tmp_path / "bytes.jsonl"
    corpus.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    code, _, err = run_cli(capsys, "--model", llama_dir, "--corpus", corpus, "--out", tmp_path / "r")
    assert code == 1 and "bytes.jsonl:2: invalid UTF-8" in err


def test_usage_errors_exit_2(capsys, tmp_path, llama_dir, pile_jsonl):
    base = ["--model", llama_dir, "--corpus", pile_jsonl]
    code, _, err = run_cli(capsys, *base, "--out", tmp_path / "a", "--seq-len", 100000)
    assert code == 2 and "--seq-len 100000 is beyond" in err and "256 positions" in err
    code, _, err = run_cli(capsys, *base, "--out", tmp_path / "b", "--layout", "diagonal")
    assert code == 2 and "invalid choice: 'diagonal'" in err
    code, _, err = run_cli(capsys, *base, "--out", tmp_path / "c", "--stride", 8)
    assert code == 2 and "--stride applies to --layout single" in err
    code, _, err = run_cli(capsys, *base, "--out", tmp_path / "d", "--batch-size", 0)
    assert code == 2 and "--batch-size" in err
    code, _, err = run_cli(capsys, *base, "--out", tmp_path / "e", "--attn", "flex")
    assert code == 2 and "CUDA only" in err
    code, _, err = run_cli(capsys, *base, "--out", tmp_path / "f", "--chat-end-of-turn")
    assert code == 2 and "--chat-end-of-turn applies to chat-formatted documents only" in err and "add --chat" in err


def test_missing_inputs(capsys, tmp_path, llama_dir, pile_jsonl):
    code, _, err = run_cli(capsys, "--model", llama_dir, "--corpus", tmp_path / "nope.jsonl", "--out", tmp_path / "a")
    assert code == 1 and "corpus not found" in err and "nope.jsonl" in err
    empty = tmp_path / "empty_model"
    empty.mkdir()
    (empty / "config.json").write_text((llama_dir / "config.json").read_text())
    code, _, err = run_cli(capsys, "--model", empty, "--corpus", pile_jsonl, "--out", tmp_path / "b")
    assert code == 1 and "model folder has no weights" in err
    missing = tmp_path / "no_such_model"
    code, _, err = run_cli(capsys, "--model", missing, "--corpus", pile_jsonl, "--out", tmp_path / "c")
    assert code == 1 and "model folder not found" in err


def test_existing_run_is_never_overwritten_silently(capsys, tmp_path, llama_dir, pile_jsonl):
    out = tmp_path / "r"
    assert run_cli(capsys, "--model", llama_dir, "--corpus", pile_jsonl, "--out", out, "--max-docs", 2)[0] == 0
    before = (out / "summary.json").read_text()
    code, _, err = run_cli(capsys, "--model", llama_dir, "--corpus", pile_jsonl, "--out", out)
    assert code == 2 and "already holds a run" in err and "--overwrite" in err
    assert (out / "summary.json").read_text() == before
    code, _, err = run_cli(capsys, "--model", llama_dir, "--corpus", pile_jsonl, "--out", out, "--overwrite")
    assert code == 0 and json.loads((out / "summary.json").read_text())["n_documents"] == 24


def test_disk_full_stops_with_a_message_and_keeps_finished_work(capsys, tmp_path, llama_dir, pile_jsonl, monkeypatch):
    import errno

    from lossgap.run.shards import ShardStore

    original = ShardStore.write
    calls = {"n": 0}

    def write_until_full(self, *args):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args)

    monkeypatch.setattr(ShardStore, "write", write_until_full)
    args = ["--model", llama_dir, "--corpus", pile_jsonl, "--out", tmp_path / "r", "--seq-len", 64,
            "--batch-size", 2, "--window-tokens", 256]
    code, _, err = run_cli(capsys, *args)
    assert code == 1 and "disk full while writing to" in err and "--resume" in err
    kept = pq.read_table(tmp_path / "r" / "tokens.parquet.partial")
    assert kept.num_rows > 0 and read_summary(tmp_path / "r")["complete"] is False
    # space is back: --resume finishes the run from the two finished windows
    monkeypatch.setattr(ShardStore, "write", original)
    code, _, err = run_cli(capsys, *args, "--resume")
    assert code == 0, err
    summary = read_summary(tmp_path / "r")
    assert summary["complete"] and summary["windows_resumed"] == 2 and summary["windows"] > 2


def test_every_file_written_stays_inside_out(capsys, tmp_path, llama_dir, pile_records):
    workdir = tmp_path / "work"
    workdir.mkdir()
    corpus = write_jsonl(workdir / "c.jsonl", pile_records)
    before = {p for p in tmp_path.rglob("*")}
    out = workdir / "out"
    assert run_cli(capsys, "--model", llama_dir, "--corpus", corpus, "--out", out, "--seq-len", 64)[0] == 0
    new = {p for p in tmp_path.rglob("*")} - before
    assert new and all(p == out or out in p.parents for p in new)


@pytest.mark.parametrize("argv", [["--help"], ["score", "--help"], ["compare", "--help"], ["corpus", "build", "-h"]])
def test_help_starts_without_torch(argv):
    """Help and argument errors come back at once: torch and transformers are imported only by the commands that
    compute."""
    probe = ("import sys; from lossgap.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    print('exit', e.code)\nprint('torch' in sys.modules, 'transformers' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines()[-2:] == ["exit 0", "False False"], proc.stderr
