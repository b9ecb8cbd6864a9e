"""Mask probe (docs/design.md, contract 4): change one document and check whether the next document's logits move.

Under the block mask they must not move; under the causal mask they must. A plan that fails is not trusted:
eager attention given a boolean mask, for example, silently ignores it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..data.layout import synthetic_row
from ..errors import PlanError
from .head import OutputHead
from .tolerances import tolerance


@dataclass
class ProbeResult:
    plan: str
    mask: str
    max_logit_shift: float
    tolerance: float
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def probe_mask(plan, head: OutputHead, vocab_size: int) -> ProbeResult:
    """Two documents packed in one row, run through the plan's own batching and attention.

    The second document must see the first exactly when the mask is causal and the plan does not score documents
    apart by construction (the docs plan serves the causal mask only where rows hold one document)."""
    rng = np.random.default_rng(0)
    len_a, len_b = 12, 10
    a = rng.integers(0, vocab_size, len_a)
    a_changed = (a + 1 + rng.integers(0, vocab_size - 1, len_a)) % vocab_size
    b = rng.integers(0, vocab_size, len_b)

    def logits_of_b(first: np.ndarray) -> torch.Tensor:
        out = []
        for batch in plan.batches(synthetic_row([first, b], plan.k, "probe")):
            hidden = plan.hidden_states(batch)
            of_b = batch.flat_index[torch.from_numpy(batch.doc_ids == 1)].to(hidden.device)
            out.append(head.logits(hidden.reshape(-1, hidden.shape[-1])[of_b]).float())
        return torch.cat(out)

    shift = (logits_of_b(a) - logits_of_b(a_changed)).abs().max().item()
    tol = tolerance("probe", plan.dtype)
    leak = plan.mask == "causal" and not plan.isolates_documents
    passed = shift > 10 * tol if leak else shift <= tol
    return ProbeResult(plan.name, plan.mask if leak or plan.mask == "block" else "causal, documents apart",
                       shift, tol, passed)


def require_probe(result: ProbeResult, model_name: str, attn: str) -> None:
    if result.passed:
        return
    if result.mask == "block":
        msg = (f"mask probe failed on {model_name} ({attn} attention, plan {result.plan}): under the block mask a "
               f"document's logits moved by {result.max_logit_shift:.3g} when the previous document changed")
    else:
        msg = (f"mask probe failed on {model_name} ({attn} attention, plan {result.plan}): under the causal mask a "
               f"document's logits did not move ({result.max_logit_shift:.3g}) when the previous document changed")
    raise PlanError(msg, "use --attn sdpa or --attn eager, or report this model to lossgap")
