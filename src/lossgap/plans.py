"""Execution plans: how a batch of rows becomes hidden states. Every plan keeps contracts 2-4.

`dense` is the reference: the model's own forward with an explicit 4D additive mask and explicit position ids,
i.e. what the seed did, minus `labels=`. Faster plans must reproduce its per-token NLL.
"""

from __future__ import annotations

import torch

from .layout import Batch
from .masks import additive_mask


class DensePlan:
    """Reference plan: 4D float mask (B,1,T,T), or (B,H,T,T) with mask_heads, through the model's attention."""

    name = "dense"

    def __init__(self, model: torch.nn.Module, mask: str, mask_heads: bool = False):
        self.model = model
        self.mask = mask
        cfg = model.config
        self.heads = cfg.num_attention_heads if mask_heads else None
        layer_types = getattr(cfg, "layer_types", None) or []
        # Models with sliding-window layers take one mask per layer type; a single 4D mask would skip the window.
        self.sliding_window = getattr(cfg, "sliding_window", None) if "sliding_attention" in layer_types else None
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    def masks(self, segment_ids: torch.Tensor):
        full = additive_mask(segment_ids, self.mask, self.dtype, self.heads)
        if self.sliding_window is None:
            return full
        sliding = additive_mask(segment_ids, self.mask, self.dtype, self.heads, self.sliding_window)
        return {"full_attention": full, "sliding_attention": sliding}

    @torch.inference_mode()
    def hidden_states(self, batch: Batch) -> torch.Tensor:
        """Final-norm hidden states [B, L, D] for every position of the batch."""
        segment_ids = batch.segment_ids.to(self.device)
        out = self.model.base_model(
            input_ids=batch.input_ids.to(self.device),
            position_ids=batch.position_ids.to(self.device),
            attention_mask=self.masks(segment_ids),
            use_cache=False,
        )
        return out.last_hidden_state
