"""Layouts place tokens and targets exactly; pure numpy, no model."""

from __future__ import annotations

import numpy as np
import pytest

from lossgap.encode import TokenizedDocument
from lossgap.layout import collate, packed_rows, single_rows


def docs_of(lengths):
    return [TokenizedDocument(i, "d", f"s{i}", np.arange(100 * i, 100 * i + n), n) for i, n in enumerate(lengths)]


def scored(rows, k, mode="restart"):
    """(doc, target position) -> (row, predicting position, target id, truncated), checked for uniqueness."""
    out = {}
    for r, row in enumerate(rows):
        b = collate([row], k, mode)
        flat = b.flat_index.numpy()
        for i in range(b.n_targets):
            key = (int(b.doc_ids[i]), int(b.target_pos[i]))
            assert key not in out
            out[key] = (r, int(flat[i]), int(b.targets[i]), bool(b.truncated[i]))
            # the predicting position holds the token k before the target
            assert int(b.input_ids[0, flat[i]]) == int(b.targets[i]) - k
    return out


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("seq_len", [3, 5, 8, 50])
def test_packed_rows_score_every_target_once(k, seq_len):
    lengths = [7, 1, 2, 12, 5, 30]
    docs = docs_of(lengths)
    rows = list(packed_rows(docs, seq_len, k))
    assert all(r.length == seq_len for r in rows[:-1])
    stream = np.concatenate([d.ids for d in docs])
    got = np.concatenate([collate([r], k, "restart").input_ids[0].numpy()[: r.length] for r in rows])
    assert (got == stream).all()
    res = scored(rows, k)
    assert set(res) == {(d, t) for d, n in enumerate(lengths) for t in range(k, n)}
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for (d, t), (_, _, target, trunc) in res.items():
        assert target == 100 * d + t
        predictor = starts[d] + t - k
        assert trunc == (predictor // seq_len * seq_len > starts[d])


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("stride", [None, 4, 7, 10])
def test_single_rows_windows(k, stride):
    lengths = [3, 10, 31, 11]
    rows = list(single_rows(docs_of(lengths), 10, k, stride))
    assert all(len(r.segments) == 1 and r.length <= 10 for r in rows)
    res = scored(rows, k)
    assert set(res) == {(d, t) for d, n in enumerate(lengths) for t in range(k, n)}
    for (_, t), (r, _, _, trunc) in res.items():
        seg = rows[r].segments[0]
        context = t - k - seg.start + 1
        assert trunc == (seg.start > 0)
        if stride is not None and trunc:
            assert context >= 10 - stride  # overlapping windows keep seq_len - stride tokens of context
    n_windows = sum(1 for r in rows if r.segments[0].doc.doc_id == 2)
    step = stride or 10
    assert n_windows == -(-max(0, 31 - 10 - k) // step) + 1  # a window only while targets remain


def test_positions_restart_per_segment_or_run_on():
    rows = list(packed_rows(docs_of([3, 4]), 8, 1))
    b = collate(rows, 1, "restart")
    assert b.position_ids[0].tolist() == [0, 1, 2, 0, 1, 2, 3]
    assert b.segment_ids[0].tolist() == [0, 0, 0, 1, 1, 1, 1]
    b = collate(rows, 1, "continuous")
    assert b.position_ids[0].tolist()[:7] == list(range(7))


def test_padding_between_rows_of_a_batch():
    rows = list(single_rows(docs_of([3, 6]), 10, 1, None))
    b = collate(rows, 1, "restart")
    assert b.input_ids.shape == (2, 6)
    assert b.segment_ids[0].tolist() == [0, 0, 0, -1, -1, -1]
    assert b.n_input_tokens == 9 and b.n_targets == 2 + 5
