"""Masks: additive 0 / finfo.min (never -inf), block vs causal, padding rows never empty."""

from __future__ import annotations

import torch

from lossgap.engine.masks import additive_mask, allowed_pairs


def test_block_and_causal_patterns():
    seg = torch.tensor([[0, 0, 1, 1, 1, -1]])
    block = allowed_pairs(seg, "block")[0].int().tolist()
    assert block == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # padding query attends to itself only
    ]
    causal = allowed_pairs(seg, "causal")[0].int()
    assert causal[4].tolist() == [1, 1, 1, 1, 1, 0] and causal[5].tolist() == [0, 0, 0, 0, 0, 1]


def test_sliding_window():
    seg = torch.zeros(1, 6, dtype=torch.long)
    allowed = allowed_pairs(seg, "block", sliding_window=2)[0].int()
    assert allowed[5].tolist() == [0, 0, 0, 0, 1, 1]


def test_additive_values_and_shapes():
    seg = torch.tensor([[0, 0, 1, -1]])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        mask = additive_mask(seg, "block", dtype)
        assert mask.shape == (1, 1, 4, 4) and mask.dtype == dtype
        values = set(mask.unique().tolist())
        assert values == {0.0, torch.finfo(dtype).min}
        assert not torch.isinf(mask).any()
    heads = additive_mask(seg, "block", torch.float32, heads=3)
    assert heads.shape == (1, 3, 4, 4) and torch.equal(heads[:, 2], heads[:, 0])
