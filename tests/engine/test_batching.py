"""--batch-size auto: working memory is measured, the batch is what fits up to the throughput cap, numbers unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lossgap.engine import batching
from lossgap.engine.allocator import keep_freed_memory
from lossgap.engine.batching import HEADROOM, TOKENS_CAP, PeakMemory, auto_batch_size
from lossgap.engine.head import OutputHead
from lossgap.engine.plans import make_plan
from tests.helpers import read_tokens, run_cli, score_run


def test_peak_memory_sees_an_allocation_of_known_size():
    size = 256 << 20
    with PeakMemory([torch.device("cpu")]) as mem:
        block = torch.ones(size // 4, dtype=torch.float32)  # ones(): every page is written, so it is resident
        del block
    assert 0.95 * size <= mem.bytes <= 1.25 * size
    with PeakMemory([torch.device("cpu")]) as mem:
        pass
    assert mem.bytes < 0.1 * size  # the earlier peak does not carry over


def test_memory_a_block_freed_in_the_kept_heap_counts_as_free_after_it():
    if not keep_freed_memory():  # the setting a CPU run makes once its model is loaded
        pytest.skip("glibc's mallopt")
    blocks = 16  # of 16 MiB: under the mmap threshold, so they come from the heap and stay there when freed
    with PeakMemory([torch.device("cpu")]) as mem:
        held = [torch.ones(4 << 20, dtype=torch.float32) for _ in range(blocks)]
        del held
    assert mem.bytes >= 0.9 * blocks * (16 << 20)
    assert batching.rss() - mem.base < 0.25 * blocks * (16 << 20)  # handed back: the next free-memory reading sees it


@pytest.fixture
def llama_plan(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    return make_plan("docs", model, "block", "restart", 1, 1), OutputHead(model)


def test_rows_are_what_fits_with_headroom(monkeypatch, llama_plan):
    plan, head = llama_plan
    sizing = auto_batch_size(plan, head, 64, plan.model.config.vocab_size)
    assert sizing.cap_rows == TOKENS_CAP["cpu"] // 64
    assert sizing.fit_rows == max(1, int(HEADROOM * sizing.free_bytes) // sizing.row_bytes)
    assert sizing.rows == min(sizing.fit_rows, sizing.cap_rows)
    # with room for 3.5 rows the batch takes 2 (0.8 x 3.5 = 2.8), with room for less than one row it still takes 1
    for rows_of_room, expected in ((3.5, 2), (0.5, 1)):
        measured = sizing.row_bytes
        monkeypatch.setattr(batching, "_free_bytes", lambda devices, m=measured, r=rows_of_room: int(r * m))
        monkeypatch.setattr(batching, "PeakMemory", _fixed_peak(measured))
        assert auto_batch_size(plan, head, 64, plan.model.config.vocab_size).rows == expected


def _fixed_peak(nbytes: int):
    class Fixed:
        def __init__(self, devices):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.bytes = nbytes

    return Fixed


def test_row_memory_grows_with_the_row(llama_plan):
    """A longer row takes more working memory: the logits chunks alone are tokens x vocab x 4 bytes."""
    plan, head = llama_plan
    head.chunk_tokens, head.vocab_tile = 1 << 20, head.vocab  # one tile: the whole row's fp32 logits at once
    vocab = plan.model.config.vocab_size
    auto_batch_size(plan, head, 32, vocab)  # the first call's one-time buffers (~9 MB here) are not the row's
    short = auto_batch_size(plan, head, 32, vocab).row_bytes
    long = auto_batch_size(plan, head, 256, vocab).row_bytes
    assert long >= 256 * vocab * 4 > short


def test_auto_batch_scores_the_same_numbers(tmp_path, llama_dir, pile_jsonl):
    ref = score_run(llama_dir, pile_jsonl, tmp_path / "one", seq_len=48, batch_size=1)
    auto = score_run(llama_dir, pile_jsonl, tmp_path / "auto", seq_len=48, batch_size="auto")
    sizing = auto.summary["batch_sizing"]
    assert auto.summary["batch_size"] == sizing["rows"] == min(sizing["fit_rows"], sizing["cap_rows"]) > 1
    assert ref.summary["batch_sizing"] is None and ref.summary["batch_size"] == 1
    a, b = read_tokens(ref.out_dir), read_tokens(auto.out_dir)
    assert (a[["doc_id", "pos", "target"]].values == b[["doc_id", "pos", "target"]].values).all()
    assert np.abs(a.nll.values - b.nll.values).max() <= 1e-5


def test_cli_batch_size_auto_and_bad_values(capsys, tmp_path, llama_dir, pile_jsonl):
    base = ["--model", llama_dir, "--corpus", pile_jsonl, "--seq-len", 48]
    code, _, err = run_cli(capsys, *base, "--out", tmp_path / "a", "--batch-size", "auto")
    assert code == 0, err
    code, _, err = run_cli(capsys, *base, "--out", tmp_path / "b", "--batch-size", "many")
    assert code == 2 and "'many' is not a number of rows or auto" in err
