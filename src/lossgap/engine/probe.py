"""Mask probe (docs/design.md, contract 4): change one document and check whether the next document's logits move.

Under the block mask they must not move; under the causal mask they must. A plan that fails is not trusted:
eager attention given a boolean mask, for example, silently ignores it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..data.layout import synthetic_row
from ..errors import ModelError, PlanError
from .head import OutputHead, non_finite_logits
from .tolerances import tolerance


@dataclass
class ProbeResult:
    plan: str
    mask: str
    max_logit_shift: float  # how far the second document's logits moved when the first changed (NaN: inf/NaN seen)
    tolerance: float
    passed: bool
    input_spread: float  # how far its logits vary over its positions: ~0 when they ignore the input
    dtype: str  # the probe ran in the model's dtype

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

    seen = logits_of_b(a)
    shift = (seen - logits_of_b(a_changed)).abs().max().item()
    tol = tolerance("probe", plan.dtype)
    leak = plan.mask == "causal" and not plan.isolates_documents
    passed = shift > 10 * tol if leak else shift <= tol
    return ProbeResult(plan.name, plan.mask if leak or plan.mask == "block" else "causal, documents apart",
                       shift, tol, passed, (seen - seen[:1]).abs().max().item(), str(plan.dtype).removeprefix("torch."))


def require_probe(result: ProbeResult, model_name: str, attn: str) -> None:
    """Refuse a plan that failed the probe, saying what was seen: inf/NaN logits and logits that ignore the input
    are the model's fault, not the attention's."""
    if result.passed:
        return
    if not (math.isfinite(result.max_logit_shift) and math.isfinite(result.input_spread)):
        raise non_finite_logits(model_name, result.dtype, "on the mask probe's two documents")
    if result.input_spread <= result.tolerance:
        raise ModelError(f"{model_name}: the model's logits do not depend on its input: they are the same (to "
                         f"{result.input_spread:.2g}) at every position of a probe document, whatever its tokens and "
                         "the document before it; the model is degenerate (e.g. all-zero weights), so no mask can "
                         "be checked and its losses would mean nothing",
                         "check the model's weights: download, convert or save them again")
    if result.mask == "block":
        msg = (f"mask probe failed on {model_name} ({attn} attention, plan {result.plan}): under the block mask a "
               f"document's logits moved by {result.max_logit_shift:.3g} when the previous document changed")
    else:
        msg = (f"mask probe failed on {model_name} ({attn} attention, plan {result.plan}): under the causal mask a "
               f"document's logits did not move ({result.max_logit_shift:.3g}) when the previous document changed")
    raise PlanError(msg, "use --attn sdpa or --attn eager, or report this model to lossgap")
