"""Variable-length attention: segment boundaries from segment ids, and attention within segments only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lossgap.engine.varlen import cumulative_lengths, varlen_attention


def test_cumulative_lengths_cut_at_segments_and_rows():
    seg = torch.tensor([[0, 0, 0, 1, 1, -1], [1, 1, 2, 2, 2, 2], [3, 3, 3, 3, 3, 3]])
    cu, longest = cumulative_lengths(seg)
    # row 2 continues segment 1 of row 1 by id, but a row start always cuts
    assert cu.tolist() == [0, 3, 5, 6, 8, 12, 18] and cu.dtype == torch.int32
    assert longest == 6


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_varlen_attention_equals_a_block_diagonal_causal_mask(kv_heads):
    """Against SDPA with an explicit block-diagonal causal mask, in float64, with grouped KV heads."""
    gen = torch.Generator().manual_seed(0)
    seg = torch.tensor([[0] * 5 + [1] * 3 + [-1] * 2, [2] * 7 + [3] * 3])
    batch, length, heads, dim = 2, 10, 4, 8
    q = torch.randn(batch, heads, length, dim, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(batch, kv_heads, length, dim, generator=gen, dtype=torch.float64) for _ in range(2))
    cu, longest = cumulative_lengths(seg)
    got, weights = varlen_attention(None, q, k, v, None, scaling=0.3, cu_seq_lens_q=cu, max_length_q=longest)
    assert weights is None and got.shape == (batch, length, heads, dim)
    pos = torch.arange(length)
    allowed = (seg[:, :, None] == seg[:, None, :]) & (pos[None, :, None] >= pos[None, None, :])
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], scale=0.3,
                                         enable_gqa=kv_heads != heads)
    assert (got - ref.transpose(1, 2)).abs().max().item() <= 1e-12


def test_varlen_attention_without_boundaries_is_refused():
    q = torch.zeros(1, 2, 4, 8)
    with pytest.raises(RuntimeError, match="needs cu_seq_lens_q"):
        varlen_attention(None, q, q, q, None)
