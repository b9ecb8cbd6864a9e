"""How far two computations that should agree may differ, by check and dtype: one table, so the start-up checks of
the head, a fused loss kernel, compiled layers and the mask probe cannot drift apart."""

from __future__ import annotations

import torch

# check -> (float32, below float32)
TOLERANCES = {
    "logits": (1e-4, 5e-2),  # the head's logits against the model's own, relative to the largest logit
    "nll": (1e-4, 1e-2),  # per-token NLL of a fused kernel or compiled layers against the reference, in nats
    "probe": (1e-4, 2e-2),  # a logit shift the mask probe counts as "did not move"
}


def tolerance(check: str, dtype: torch.dtype) -> float:
    full, reduced = TOLERANCES[check]
    return full if dtype == torch.float32 else reduced
