"""Layouts place tokens and targets exactly; pure numpy, no model."""

from __future__ import annotations

import numpy as np
import pytest

from lossgap.data.encode import TokenizedDocument
from lossgap.data.layout import Row, Segment, collate, length_buckets, packed_rows, retarget, single_rows


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


def _rows_of_lengths(lengths):
    return [Row([Segment(doc, 0, len(doc.ids), 0, 1, len(doc.ids))]) for doc in docs_of(lengths)]


def _padded_cost(groups, pad, overhead):
    return sum(len(g) * (-(-max(r.length for r in g) // pad) * pad) + overhead for g in groups)


def _brute_force_best(lengths, budget, pad, overhead):
    """Every way of cutting the sorted lengths into consecutive batches that fit; the cheapest cost."""
    ordered = sorted(lengths, reverse=True)
    padded = [-(-n // pad) * pad for n in ordered]
    best = None
    for mask in range(1 << (len(ordered) - 1)):
        cuts = [0] + [i + 1 for i in range(len(ordered) - 1) if mask >> i & 1] + [len(ordered)]
        spans = list(zip(cuts[:-1], cuts[1:], strict=True))
        if any(j - i > 1 and (j - i) * padded[i] > budget for i, j in spans):
            continue
        cost = sum((j - i) * padded[i] + overhead for i, j in spans)
        best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_length_buckets_are_the_cheapest_cut_that_fits(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 90, size=int(rng.integers(1, 11))).tolist()
    budget, pad, overhead = int(rng.integers(90, 300)), int(rng.choice([1, 4, 16])), int(rng.integers(0, 40))
    rows = _rows_of_lengths(lengths)
    groups = list(length_buckets(rows, budget, pad, overhead))
    # every row once; each batch fits the budget (a lone row always may); longest first
    assert sorted(id(r) for g in groups for r in g) == sorted(id(r) for r in rows)
    for g in groups:
        padded = -(-max(r.length for r in g) // pad) * pad
        assert len(g) == 1 or len(g) * padded <= budget
    flat = [r.length for g in groups for r in g]
    assert flat == sorted(flat, reverse=True)
    assert _padded_cost(groups, pad, overhead) == _brute_force_best(lengths, budget, pad, overhead)


def test_length_buckets_waste_little_on_pile_like_lengths():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(400) - 0.5, 1.0, 400), 16, 4096).astype(int).tolist()
    groups = list(length_buckets(_rows_of_lengths(lengths), 4096, 16))
    computed = _padded_cost(groups, 16, 0)
    assert computed <= 1.05 * sum(lengths)  # greedy filling from the longest row (64-token padding) computed 1.13x here


def _contexts(rows, k):
    """(doc, target position) -> (the row's input ids, predicting position in the row, truncated), for every target."""
    out = {}
    for row in rows:
        b = collate([row], k, "restart")
        ids = tuple(b.input_ids[0].tolist())
        for i in range(b.n_targets):
            key = (int(b.doc_ids[i]), int(b.target_pos[i]))
            assert key not in out
            out[key] = (ids, int(b.flat_index[i]), bool(b.truncated[i]))
    return out


@pytest.mark.parametrize("lengths", [[1, 2, 3, 9, 10, 11, 12, 25], [5, 40, 2, 17], [13, 14, 15, 16]])
@pytest.mark.parametrize(("layout", "seq_len", "stride"), [("packed", 5, None), ("packed", 12, None),
                                                           ("single", 10, None), ("single", 10, 4), ("single", 7, 3)])
def test_rows_for_offset_1_serve_offset_2_exactly(lengths, layout, seq_len, stride):
    """Retargeted rows score the same targets from the same context as rows laid out for offset 2."""
    docs = docs_of(lengths)

    def rows(k):
        return list(packed_rows(docs, seq_len, k) if layout == "packed" else single_rows(docs, seq_len, k, stride))

    assert _contexts(retarget(rows(1), 1, 2), 2) == _contexts(rows(2), 2)
    assert retarget(rows(1), 1, 1) == rows(1)
    with pytest.raises(ValueError):
        retarget(rows(2), 2, 1)
