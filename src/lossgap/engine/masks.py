"""4D additive attention masks: 0 where attention is allowed, finfo(dtype).min elsewhere (never -inf:
docs/design.md, contract 4)."""

from __future__ import annotations

import torch


def allowed_pairs(segment_ids: torch.Tensor, mode: str, sliding_window: int | None = None) -> torch.Tensor:
    """Boolean [B, L, L]: may query q attend to key k?

    block: same segment and k <= q; causal: any real (non-padding) key with k <= q, so context crosses documents.
    Padding queries attend to themselves only, so no row of the mask is empty.
    """
    length = segment_ids.shape[-1]
    idx = torch.arange(length, device=segment_ids.device)
    causal = idx[None, :, None] >= idx[None, None, :]
    real = segment_ids >= 0
    allowed = causal & real[:, None, :] & real[:, :, None]
    if mode == "block":
        allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :])
    elif mode != "causal":
        raise ValueError(f"unknown mask mode {mode!r}")
    if sliding_window is not None:
        allowed = allowed & ((idx[None, :, None] - idx[None, None, :]) < sliding_window)
    pad_query = (~real)[:, :, None] & torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    return allowed | pad_query


def additive_mask(
    segment_ids: torch.Tensor,
    mode: str,
    dtype: torch.dtype,
    heads: int | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Float mask [B, 1, L, L] (or [B, H, L, L] with heads, as the seed built it) in the model's dtype."""
    allowed = allowed_pairs(segment_ids, mode, sliding_window)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    mask = mask[:, None]
    if heads is not None:
        mask = mask.expand(-1, heads, -1, -1).contiguous()
    return mask
