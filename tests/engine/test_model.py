"""Loading's own checks: the scan for NaN and inf in the weights counts them exactly, and cheaply."""

from __future__ import annotations

import torch

from lossgap.engine.model import nonfinite


def test_nonfinite_counts_nan_and_inf_exactly_and_not_values_whose_sum_overflows():
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        values = torch.linspace(-3, 3, 1000, dtype=dtype)
        assert nonfinite(values) == 0
        values[[5, 17, 900]] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype)
        assert nonfinite(values) == 3, dtype
        big = torch.full((8,), torch.finfo(dtype).max, dtype=dtype)  # finite, but their float32 sum is not
        assert nonfinite(big) == 0, dtype
    assert nonfinite(torch.tensor([float("inf"), -float("inf")])) == 2  # inf - inf: a NaN sum, still two
