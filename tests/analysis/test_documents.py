"""Two runs over the same documents: the differences, overall and per domain, by hand; the Wilcoxon test as scipy's;
a run's documents read back from documents.parquet."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats as sps

from lossgap.analysis.documents import RunDocuments, compare_docs, wilcoxon


def test_wilcoxon_matches_scipy_and_handles_all_zero():
    assert wilcoxon(np.zeros(10)) == (0.0, 1.0)
    x = np.random.default_rng(1).normal(0.2, 1, size=40)
    assert wilcoxon(x)[1] == pytest.approx(sps.wilcoxon(x).pvalue)


def _docs(nll_sum, n_tokens, domains):
    k = len(nll_sum)
    return RunDocuments(np.arange(k), np.array(domains, dtype=object), np.array(n_tokens), np.full(k, 100),
                    {"nll_sum": np.array(nll_sum, dtype=float), "truncated_context_tokens": np.zeros(k, dtype=int)})


def test_compare_docs_numbers_by_hand():
    a = _docs([10.0, 20.0, 30.0], [10, 10, 20], ["x", "x", "y"])
    b = _docs([12.0, 19.0, 36.0], [10, 10, 20], ["x", "x", "y"])
    res = compare_docs(a, b, "tokens", 500, 0)
    o = res["overall"]
    assert o["diff"] == pytest.approx((2 - 1 + 6) / 40)
    assert o["relative_perplexity_change"] == pytest.approx(np.expm1(7 / 40))
    assert o["doc_weighted_diff"] == pytest.approx((0.2 - 0.1 + 0.3) / 3)
    assert o["share_docs_worse"] == pytest.approx(2 / 3)
    assert o["base"] == pytest.approx(60 / 40) and o["other"] == pytest.approx(67 / 40)
    assert res["per_domain"]["x"]["diff"] == pytest.approx(1 / 20)
    assert res["per_domain"]["y"]["diff"] == pytest.approx(6 / 20)
    bpb = compare_docs(a, b, "bits_per_byte", 500, 0)["overall"]
    assert bpb["diff"] == pytest.approx(7 / (np.log(2) * 300)) and bpb["unit"] == "bits/byte"


def test_run_documents_read_back_what_the_table_holds():
    table = pa.table({"doc_id": [2, 0, 1], "domain": ["b", "a", "a"], "n_tokens": [3, 0, 5], "n_bytes": [9, 4, 20],
                      "nll_sum": [6.0, 0.0, 10.0], "truncated_context_tokens": [1, 0, 0]})
    docs = RunDocuments.from_table(table)
    assert docs.doc_id.tolist() == [0, 1, 2] and docs.domain.tolist() == ["a", "a", "b"]
    assert docs.nll_sum.tolist() == [0.0, 10.0, 6.0]
    s = docs.summary()
    assert s["mean_nll"] == pytest.approx(16 / 8) and s["n_scored_documents"] == 2
    assert s["truncated_context_tokens"] == 1 and s["doc_mean_nll"] == pytest.approx((2 + 2) / 2)
