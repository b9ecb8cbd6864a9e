"""Position buckets and leakage by position, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lossgap.analysis.positions import (
    EARLY_BUCKETS,
    bucket_labels,
    leakage_by_position,
    position_bucket,
    position_profile,
)


def test_position_buckets():
    pos = np.array([1, 2, 3, 4, 5, 8, 9, 16, 17, 1024, 1025, 50_000])
    labels = [bucket_labels()[i] for i in position_bucket(pos)]
    assert labels == ["1", "2", "3", "4", "5-8", "5-8", "9-16", "9-16", "17-32", "513-1024", ">1024", ">1024"]


def test_leakage_by_position_by_hand():
    block = {"doc_id": np.array([0, 0, 0, 1, 1]), "pos": np.array([1, 2, 5, 1, 2]),
             "nll": np.array([5.0, 4.0, 3.0, 6.0, 2.0], dtype=np.float32)}
    causal = dict(block, nll=np.array([3.0, 4.0, 3.0, 2.0, 2.0], dtype=np.float32))
    rows = {r["bucket"]: r for r in leakage_by_position(block, causal)}
    assert rows["1"]["mean_diff"] == pytest.approx(-3.0) and rows["1"]["share_tokens"] == pytest.approx(0.4)
    assert rows["2"]["mean_diff"] == 0.0 and rows["5-8"]["n_tokens"] == 1
    assert rows["all"]["mean_diff"] == pytest.approx(-6 / 5) and rows["1"]["share_of_abs_diff"] == pytest.approx(6 / 6)
    with pytest.raises(ValueError, match="different tokens"):
        leakage_by_position(block, dict(causal, pos=np.array([1, 2, 6, 1, 2])))


def test_early_buckets_are_the_first_four_positions():
    assert EARLY_BUCKETS == ("1", "2", "3", "4")


def test_position_profile_by_hand():
    tokens = {"pos": np.array([1, 1, 6, 7]), "nll": np.array([2.0, 4.0, 1.0, 2.0])}
    assert position_profile(tokens) == [{"bucket": "1", "n_tokens": 2, "mean_nll": 3.0},
                                         {"bucket": "5-8", "n_tokens": 2, "mean_nll": 1.5}]
