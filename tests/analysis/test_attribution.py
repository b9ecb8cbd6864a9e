"""Attributions add up (docs/design.md, contract 9), intervals are sound and seeded, spans are the best ones."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from lossgap.analysis.attribution import (
    agreement_buckets,
    attribute,
    best_span_ends,
    bucket_types,
    byte_class_contributions,
    confidence_buckets,
    contributions,
    domain_buckets,
    frequency_buckets,
    position_buckets,
    text_class_buckets,
    top_documents,
    top_spans,
    top_tokens,
)
from lossgap.analysis.bootstrap import ratio_interval
from lossgap.analysis.textclass import BYTE_CLASSES, TEXT_CLASSES

VOCAB = 50


def fake_vocab(n: int = VOCAB, seed: int = 0) -> pa.Table:
    """A vocabulary table of random byte strings; ids 0 and 1 are special (no bytes)."""
    rng = np.random.default_rng(seed)
    alphabet = [b"a", b"Z", b" ", b"\n", b"7", b".", b"\xc3", b"\t", b"\x01"]
    data = [b"", b""] + [b"".join(rng.choice(alphabet, size=rng.integers(1, 5))) for _ in range(n - 2)]
    from lossgap.analysis.textclass import BYTE_CLASS_OF, text_class

    cols = {"id": np.arange(n, dtype=np.int32), "bytes": pa.array(data, type=pa.binary()),
            "text": [b.decode("utf-8", "replace") for b in data], "n_bytes": [len(b) for b in data],
            "text_class": [text_class(b, i < 2) for i, b in enumerate(data)]}
    for j, name in enumerate(BYTE_CLASSES):
        cols[f"bytes_{name}"] = [int((BYTE_CLASS_OF[np.frombuffer(b, np.uint8)] == j).sum()) for b in data]
    return pa.table(cols)


def fake_tokens(seed: int, n_docs: int = 30, identical: bool = False) -> dict[str, np.ndarray]:
    """Per-token arrays of two models on the same tokens, documents of random lengths."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 80, size=n_docs)
    doc_id = np.repeat(rng.permutation(1000)[:n_docs], lengths).astype(np.int64)
    pos = np.concatenate([np.arange(1, n + 1) for n in lengths]).astype(np.int32)
    n = doc_id.size
    nll_b = rng.gamma(2.0, 1.5, size=n).astype(np.float32)
    nll_o = nll_b if identical else (nll_b + rng.normal(0.1, 0.8, size=n)).clip(0).astype(np.float32)
    target = rng.zipf(1.5, size=n) % VOCAB
    return {"doc_id": doc_id, "pos": pos, "target": target.astype(np.int32), "nll_b": nll_b, "nll_o": nll_o,
            "p_target_b": np.exp(-nll_b.astype(np.float64)), "top1_agree": rng.random(n) < 0.6}


def all_dimensions(t: dict, vocab: pa.Table) -> dict:
    domains = {int(d): ("code", "prose", "math")[int(d) % 3] for d in np.unique(t["doc_id"])}
    return {
        "domain": domain_buckets(t["doc_id"], domains), "position": position_buckets(t["pos"]),
        "text_class": text_class_buckets(t["target"], vocab), "frequency": frequency_buckets(t["target"]),
        "confidence": confidence_buckets(t["p_target_b"]), "agreement": agreement_buckets(t["top1_agree"]),
    }


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_every_dimension_adds_up_to_the_difference(seed):
    t, vocab = fake_tokens(seed), fake_vocab()
    diff = float(np.mean(t["nll_o"].astype(np.float64) - t["nll_b"].astype(np.float64)))
    for name, (bucket, labels) in all_dimensions(t, vocab).items():
        res = contributions(t["nll_b"], t["nll_o"], t["doc_id"], bucket, labels, n_boot=50, seed=seed)
        assert res["diff"] == pytest.approx(diff, abs=1e-12)
        assert abs(sum(r["contribution"] for r in res["buckets"]) - diff) < 1e-9, name
        assert sum(r["n_tokens"] for r in res["buckets"]) == t["doc_id"].size
        assert sum(r["share_tokens"] for r in res["buckets"]) == pytest.approx(1.0)
        assert sum(r["share_of_diff"] for r in res["buckets"]) == pytest.approx(1.0)
        for r in res["buckets"]:
            assert r["mean_delta"] == pytest.approx(r["mean_nll_other"] - r["mean_nll_base"])
            assert r["contribution"] == pytest.approx(r["mean_delta"] * r["share_tokens"])


def test_contributions_by_hand():
    nll_b, nll_o = np.array([1.0, 2.0, 3.0, 1.0]), np.array([2.0, 2.0, 1.0, 1.5])
    res = contributions(nll_b, nll_o, [7, 7, 9, 9], [0, 1, 0, 2], ["a", "b", "c", "empty"], n_boot=20)
    assert res["diff"] == pytest.approx((1 + 0 - 2 + 0.5) / 4)
    by = {r["bucket"]: r for r in res["buckets"]}
    assert set(by) == {"a", "b", "c"}  # empty buckets are left out
    assert by["a"]["contribution"] == pytest.approx(-1 / 4) and by["a"]["mean_delta"] == pytest.approx(-0.5)
    assert by["c"]["contribution"] == pytest.approx(0.5 / 4) and by["c"]["n_tokens"] == 1
    assert by["a"]["mean_nll_base"] == pytest.approx(2.0) and by["a"]["mean_nll_other"] == pytest.approx(1.5)


def test_identical_models_contribute_nothing():
    t, vocab = fake_tokens(5, identical=True), fake_vocab()
    for bucket, labels in all_dimensions(t, vocab).values():
        res = contributions(t["nll_b"], t["nll_o"], t["doc_id"], bucket, labels, n_boot=30)
        assert res["diff"] == 0.0 and res["ci_low"] == 0.0 and res["ci_high"] == 0.0
        assert all(r["contribution"] == 0 and r["ci_low"] == 0 and r["ci_high"] == 0 for r in res["buckets"])


@pytest.mark.parametrize("seed", [0, 4])
def test_intervals_contain_the_estimate_and_repeat_with_the_seed(seed):
    t = fake_tokens(seed, n_docs=60)
    bucket, labels = position_buckets(t["pos"])
    a = contributions(t["nll_b"], t["nll_o"], t["doc_id"], bucket, labels, n_boot=400, seed=seed)
    b = contributions(t["nll_b"], t["nll_o"], t["doc_id"], bucket, labels, n_boot=400, seed=seed)
    c = contributions(t["nll_b"], t["nll_o"], t["doc_id"], bucket, labels, n_boot=400, seed=seed + 1)
    assert a == b and a != c
    assert a["ci_low"] <= a["diff"] <= a["ci_high"]
    for r in a["buckets"]:
        assert r["ci_low"] <= r["contribution"] <= r["ci_high"]


def test_the_interval_of_d_is_the_headline_bootstrap():
    """Same documents (sorted by id) and seed: the same resamples as the headline interval of documents.py."""
    t = fake_tokens(11, n_docs=40)
    bucket, labels = agreement_buckets(t["top1_agree"])
    res = contributions(t["nll_b"], t["nll_o"], t["doc_id"], bucket, labels, n_boot=300, seed=3)
    docs, idx = np.unique(t["doc_id"], return_inverse=True)
    delta = np.bincount(idx, weights=t["nll_o"].astype(np.float64) - t["nll_b"].astype(np.float64))
    lo, hi = ratio_interval(delta, np.bincount(idx).astype(np.float64), 300, 3)
    assert res["ci_low"] == pytest.approx(lo, abs=1e-12) and res["ci_high"] == pytest.approx(hi, abs=1e-12)


def test_a_bucket_of_one_document_has_no_interval():
    """Resampling one document shows no spread between documents: its bucket gets NaN (n/a in the report), not the
    0-to-2x interval that drawing it zero, one or two times gives."""
    nll_b = np.zeros(7)
    nll_o = np.array([1.0, 0.5, 0.2, 0.1, 0.3, 0.4, 2.0])
    res = contributions(nll_b, nll_o, [1, 1, 2, 2, 3, 3, 4], [0, 1, 0, 1, 0, 1, 2], ["a", "b", "one"], n_boot=200)
    by = {r["bucket"]: r for r in res["buckets"]}
    assert [by[k]["n_documents"] for k in ("a", "b", "one")] == [3, 3, 1]
    assert math.isnan(by["one"]["ci_low"]) and math.isnan(by["one"]["ci_high"])
    assert by["one"]["contribution"] == pytest.approx(2.0 / 7)
    assert by["a"]["ci_low"] < by["a"]["contribution"] < by["a"]["ci_high"] and res["ci_low"] < res["ci_high"]
    alone = contributions(nll_b[:2], nll_o[:2], [5, 5], [0, 1], ["a", "b"], n_boot=50)
    assert math.isnan(alone["ci_low"]) and all(math.isnan(r["ci_low"]) for r in alone["buckets"])


def test_bucket_types_count_the_types_and_name_those_that_carry_the_bucket():
    vocab = pa.table({"text": ["<s>", "Answer", "Question", "x", "y"]})
    target = np.array([1, 1, 2, 2, 3, 4, 4, 4])
    nll_b = np.zeros(8)
    nll_o = np.array([1.0, 1.0, 0.5, 0.5, -0.5, 0.1, 0.1, 0.1])
    bucket = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    types = bucket_types(target, nll_b, nll_o, bucket, ["rare", "common"], vocab, k=2)
    assert types["rare"]["n_types"] == 3 and types["common"]["n_types"] == 1
    answer, question = types["rare"]["top_types"]
    assert (answer["token_id"], answer["text"], answer["n_tokens"]) == (1, "Answer", 2)
    assert answer["share_of_bucket"] == pytest.approx(2.0 / 2.5) and question["share_of_bucket"] == pytest.approx(0.4)
    assert answer["contribution"] == pytest.approx(2.0 / 8)
    better = bucket_types(target, nll_o, nll_b, bucket, ["rare", "common"], vocab, k=1)  # the bucket's sum < 0
    assert better["rare"]["top_types"][0]["text"] == "Answer"


def test_frequency_buckets_carry_their_types():
    t, vocab = fake_tokens(3), fake_vocab()
    res = attribute(t, vocab, n_boot=20, top_k=3)
    freq = res["dimensions"]["frequency"]["buckets"]
    assert sum(b["n_types"] for b in freq) == np.unique(t["target"]).size
    for b in freq:
        assert 1 <= len(b["top_types"]) <= 3 and all("text" in x for x in b["top_types"])
    assert "top_types" not in res["dimensions"]["position"]["buckets"][0]


def test_frequency_buckets_hold_about_a_tenth_each():
    rng = np.random.default_rng(0)
    target = rng.zipf(1.3, size=20_000) % 5000
    bucket, labels = frequency_buckets(target)
    shares = np.bincount(bucket) / target.size
    assert len(labels) == shares.size <= 10 and shares.size >= 5
    counts = np.bincount(target)[target]
    for b in range(shares.size - 1):  # count ranges do not overlap and rise with the bucket
        assert counts[bucket == b].max() < counts[bucket == b + 1].min()
    assert labels[0].split("-")[0] == "1"
    uniform = np.repeat(np.arange(100), 10)
    b, lab = frequency_buckets(uniform)
    assert lab == ["10"] and set(b.tolist()) == {0}


def test_confidence_and_agreement_buckets():
    p = np.array([0.0, 0.0099, 0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98, 0.99, 1.0])
    b, labels = confidence_buckets(p)
    assert [labels[i] for i in b] == ["<0.01", "<0.01", "0.01-0.1", "0.01-0.1", "0.1-0.3", "0.3-0.5", "0.5-0.7",
                                      "0.7-0.9", "0.9-0.99", "0.9-0.99", ">=0.99", ">=0.99"]
    b, labels = agreement_buckets([True, False])
    assert [labels[i] for i in b] == ["agree", "differ"]
    b, labels = text_class_buckets([0, 1], fake_vocab())
    assert [labels[i] for i in b] == ["special", "special"] and labels == list(TEXT_CLASSES)


def test_domain_buckets_need_every_document():
    b, labels = domain_buckets([5, 5, 3], {5: "z", 3: "a"})
    assert labels == ["a", "z"] and b.tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="no domain"):
        domain_buckets([1, 2], {1: "a"})


def test_top_documents_and_tokens_by_hand():
    doc_id = np.array([1, 1, 2, 2, 3])
    target = np.array([4, 5, 4, 6, 5])
    nll_b = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    nll_o = np.array([3.0, 1.0, 0.5, 0.0, 1.0])
    docs = top_documents(doc_id, nll_b, nll_o, k=5, doc_domain={1: "a", 2: "b", 3: "c"})
    assert [d["doc_id"] for d in docs["other_worse"]] == [1] and [d["doc_id"] for d in docs["other_better"]] == [2]
    assert docs["other_worse"][0] == {"doc_id": 1, "domain": "a", "n_tokens": 2, "delta_sum": 2.0,
                                      "contribution": 0.4, "mean_delta": 1.0, "mean_nll_base": 1.0,
                                      "mean_nll_other": 2.0}
    toks = top_tokens(target, nll_b, nll_o, fake_vocab(), k=5)
    assert [r["token_id"] for r in toks["other_worse"]] == [4] and toks["other_worse"][0]["count"] == 2
    assert toks["other_worse"][0]["delta_sum"] == pytest.approx(1.5)
    assert [r["token_id"] for r in toks["other_better"]] == [6]


def brute_force_spans(delta, doc_idx, max_len, per_doc):
    """Every span of every document, greedily: the best positive one not touching those already taken."""
    spans = []
    for d in np.unique(doc_idx):
        where = np.flatnonzero(doc_idx == d)
        taken = set()
        for _ in range(per_doc):
            best = None
            for i in where:
                for j in where[(where >= i) & (where < i + max_len)]:
                    if taken & set(range(i, j + 1)):
                        continue
                    s = delta[i:j + 1].sum()
                    if s > 0 and (best is None or s > best[0] + 1e-12):
                        best = (s, i, j)
            if best is None:
                break
            spans.append((best[1], best[2], best[0]))
            taken |= set(range(best[1], best[2] + 1))
    return spans


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("per_doc", [1, 3])
def test_spans_equal_a_brute_force_search(seed, per_doc):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 25, size=6)
    doc_id = np.repeat(np.arange(6) * 10, lengths)
    pos = np.concatenate([np.arange(1, n + 1) for n in lengths])
    nll_b = rng.random(doc_id.size)
    nll_o = nll_b + rng.normal(0, 1, size=doc_id.size)
    max_len = 6
    res = top_spans(doc_id, pos, nll_b, nll_o, max_len=max_len, per_doc=per_doc, k=1000)
    delta = nll_o - nll_b
    doc_idx = np.unique(doc_id, return_inverse=True)[1]
    for direction, sign in (("other_worse", 1), ("other_better", -1)):
        expect = brute_force_spans(sign * delta, doc_idx, max_len, per_doc)
        got = res[direction]
        assert len(got) == len(expect)
        expect = sorted(expect, key=lambda e: (-e[2], e[0]))
        for row, (i, j, s) in zip(got, expect, strict=True):
            assert (row["doc_id"], row["first_pos"], row["last_pos"]) == (doc_id[i], pos[i], pos[j])
            assert row["delta_sum"] == pytest.approx(sign * s)
            assert row["n_tokens"] == j - i + 1 <= max_len
            assert row["nll_sum_other"] - row["nll_sum_base"] == pytest.approx(row["delta_sum"])


def test_spans_sort_unsorted_tokens_and_carry_text():
    vocab = fake_vocab()
    doc_id, pos = np.array([2, 1, 1, 2]), np.array([1, 2, 1, 2])
    target = np.array([3, 4, 5, 6])
    nll_b, nll_o = np.zeros(4), np.array([0.0, 1.0, 1.0, -1.0])
    res = top_spans(doc_id, pos, nll_b, nll_o, vocab=vocab, target=target)
    (worse,) = res["other_worse"]
    assert (worse["doc_id"], worse["first_pos"], worse["last_pos"], worse["delta_sum"]) == (1, 1, 2, 2.0)
    data = vocab.column("bytes").to_pylist()
    assert worse["text"] == (data[5] + data[4]).decode("utf-8", "replace")
    (better,) = res["other_better"]
    assert (better["doc_id"], better["first_pos"], better["last_pos"]) == (2, 2, 2)


def test_no_tokens_no_spans():
    empty = np.zeros(0)
    assert top_spans(empty, empty, empty, empty) == {"other_worse": [], "other_better": []}


def test_best_span_ends_respects_the_segment_and_the_length():
    values = np.array([1.0, 1.0, -5.0, 2.0, 2.0, 2.0])
    best, length = best_span_ends(values, np.array([0, 0, 0, 3, 3, 3]), max_len=2)
    assert best.tolist() == [1.0, 2.0, -4.0, 2.0, 4.0, 4.0] and length.tolist() == [1, 2, 2, 1, 2, 2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_byte_classes_add_up_to_the_bits_per_byte_difference(seed):
    rng = np.random.default_rng(seed)
    vb, vo = fake_vocab(seed=1), fake_vocab(n=40, seed=2)
    docs = np.array([3, 8, 1, 20])
    n_bytes = np.array([120, 80, 200, 60])
    runs = []
    for vocab in (vb, vo):
        n = rng.integers(40, 90)
        runs.append({"doc_id": rng.choice(docs, size=n), "target": rng.integers(0, vocab.num_rows, size=n),
                     "nll": rng.gamma(2.0, 1.0, size=n).astype(np.float32)})
    res = byte_class_contributions(runs[0], runs[1], vb, vo, docs, n_bytes, n_boot=200, seed=seed)
    total_bits = [r["nll"].astype(np.float64).sum() / math.log(2) for r in runs]
    assert res["diff"] == pytest.approx((total_bits[1] - total_bits[0]) / n_bytes.sum())
    assert res["base"] == pytest.approx(total_bits[0] / n_bytes.sum())
    assert abs(sum(r["contribution"] for r in res["classes"]) - res["diff"]) < 1e-9
    assert [r["bucket"] for r in res["classes"]] == [*BYTE_CLASSES, "special"]
    for run, vocab, key in ((runs[0], vb, "base"), (runs[1], vo, "other")):
        assert sum(r[f"bytes_{key}"] for r in res["classes"]) == vocab.column("n_bytes").to_numpy()[run["target"]].sum()
        assert sum(r[f"bits_{key}"] for r in res["classes"]) == pytest.approx(run["nll"].sum() / math.log(2))
        special = run["nll"][vocab.column("n_bytes").to_numpy()[run["target"]] == 0].sum() / math.log(2)
        assert res["classes"][-1][f"bits_{key}"] == pytest.approx(special)
    assert res["ci_low"] <= res["diff"] <= res["ci_high"]


def test_bits_per_byte_of_identical_runs_is_zero_and_needs_byte_counts():
    vocab = fake_vocab()
    run = {"doc_id": np.array([1, 1, 2]), "target": np.array([0, 5, 7]), "nll": np.array([1.0, 2.0, 3.0])}
    res = byte_class_contributions(run, run, vocab, vocab, [2, 1], [10, 20], n_boot=20)
    assert res["diff"] == 0 and all(r["contribution"] == 0 for r in res["classes"])
    with pytest.raises(ValueError, match="byte count"):
        byte_class_contributions(run, run, vocab, vocab, [1], [10], n_boot=20)


def test_attribute_gathers_everything():
    t, vocab = fake_tokens(2), fake_vocab()
    domains = {int(d): "x" if d % 2 else "y" for d in np.unique(t["doc_id"])}
    res = attribute(t, vocab, domains, n_boot=50, seed=0, top_k=3)
    assert set(res["dimensions"]) == {"domain", "position", "text_class", "frequency", "confidence", "agreement"}
    intervals = {(d["ci_low"], d["ci_high"]) for d in res["dimensions"].values()}
    assert len(intervals) == 1  # one seed: every dimension shows the same interval of D
    assert len(res["top_documents"]["other_worse"]) <= 3 and "text" in res["top_tokens"]["other_worse"][0]
    assert "text" in res["top_spans"]["other_worse"][0]
    import json

    json.dumps(res)
