"""The forward layer: a batch through a model to per-token results, below any orchestration.

`plan.hidden_states` runs the model (the plan decides masks and attention); the output head turns the hidden states
of the positions that predict a target into per-token columns (columns.py, source "model"). One forward pass serves
every label offset of the same rows. Also here: the float32 re-scoring that reduced-precision and compiled runs are
checked against, switching compiled layers to eager, and refusing non-finite losses.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from ..errors import LossgapError
from ..formats.schema import FP32_LIMITS, exceeds_fp32_limits
from .headstats import paired_token_stats

PAIR_CHECKED = ("nll_b", "nll_o", "kl_bo", "kl_ob")  # the paired statistics the float32 check measures


@contextmanager
def eager():
    """Run compiled modules as plain eager PyTorch inside the block (references, the float32 check). Before torch 2.6
    nothing is compiled (compiled.compile_layers refuses), so there is nothing to switch off."""
    if not hasattr(torch.compiler, "set_stance"):
        yield
        return
    with torch.compiler.set_stance("force_eager"):
        yield


@torch.inference_mode()
def forward_batches(plan, head, batches: list, metrics: tuple[str, ...] = ("nll",)) -> list[dict[str, np.ndarray]]:
    """The same rows scoring different targets (label offsets): one forward pass, then per batch the head's per-token
    `metrics` (name -> [N] array, in the batch's target order)."""
    hidden = plan.hidden_states(batches[0])
    hidden = hidden.reshape(-1, hidden.shape[-1])
    out = []
    for b in batches:
        stats = head.token_stats(hidden[b.flat_index.to(hidden.device)], b.targets.to(hidden.device), metrics)
        out.append({name: values.cpu().numpy() for name, values in stats.items()})
    return out


def forward_pair(plan_b, head_b, plan_o, head_o, batch) -> dict[str, np.ndarray]:
    """A baseline b and another model o on the same batch: each model's distribution statistics and the pair's (KL
    both ways, top-1 agreement), from one pass over both heads' vocabulary tiles (headstats.py), by the roles of
    formats/columns.py's paired columns."""
    return _pair_stats(head_b, _scored_hidden(plan_b, batch), head_o, _scored_hidden(plan_o, batch), batch.targets)


@torch.inference_mode()
def _scored_hidden(plan, batch) -> torch.Tensor:
    """The hidden states of the positions that predict the batch's targets, [N, hidden], in target order."""
    hidden = plan.hidden_states(batch)
    return hidden.reshape(-1, hidden.shape[-1])[batch.flat_index.to(hidden.device)]


@torch.inference_mode()
def _pair_stats(head_b, hidden_b: torch.Tensor, head_o, hidden_o: torch.Tensor, targets) -> dict[str, np.ndarray]:
    stats = paired_token_stats(head_b, hidden_b, head_o, hidden_o.to(hidden_b.device), targets.to(hidden_b.device))
    return {role: values.cpu().numpy() for role, values in stats.items()}


def score_batches(plan, head, batches: list) -> list[np.ndarray]:
    """Per-token NLL (fp32, nats) of each batch's targets from one forward pass."""
    return [stats["nll"] for stats in forward_batches(plan, head, batches)]


def score_batch(plan, head, batch) -> np.ndarray:
    """Per-token NLL (fp32, nats) of the batch's scored targets, in the batch's target order."""
    return score_batches(plan, head, [batch])[0]


@contextmanager
def in_float32(plan):
    """The plan and its model in float32, eager, inside the block: the reference for reduced-precision and compiled
    runs. The model is left exactly as it was, so the batches scored after the check match those scored before it."""
    dtype = plan.dtype
    plan.dtype = torch.float32
    try:
        with float32_weights(plan.model), eager():
            yield
    finally:
        plan.dtype = dtype


def float32_nll(plan, head, batch) -> np.ndarray:
    """The batch scored by the eager model in float32."""
    with in_float32(plan):
        return score_batch(plan, head, batch)


def float32_pair(plan_b, head_b, plan_o, head_o, batch) -> dict[str, np.ndarray]:
    """forward_pair in float32. One model at a time is put in float32 (the memory the single-model check needs, not
    twice that), then only the two output heads, for the statistics of both distributions together."""
    hidden = []
    for plan in (plan_b, plan_o):
        with in_float32(plan):
            hidden.append(_scored_hidden(plan, batch))
    with float32_weights(head_b.proj), float32_weights(head_o.proj), eager():
        return _pair_stats(head_b, hidden[0], head_o, hidden[1], batch.targets)


@contextmanager
def float32_weights(model: torch.nn.Module):
    """The model's reduced-precision parameters and buffers in float32 inside the block, each given back in its own
    dtype afterwards. `model.to(float32)` and back is not that: it also casts buffers that were float32 to begin with
    (rotary inv_freq) down to bf16, which changed every batch scored after the check (a process's first batch then
    differed from the same batch scored later by another process or a resumed run). Parameters round-trip exactly
    (bf16/fp16 -> fp32 -> back); buffers are put back as the very tensors they were."""
    params = [(p, p.dtype) for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32]
    buffers = [(m, name, b) for m in model.modules() for name, b in m._buffers.items()
               if b is not None and b.is_floating_point() and b.dtype != torch.float32]
    try:
        for p, _ in params:
            p.data = p.data.float()
        for m, name, b in buffers:
            m._buffers[name] = b.float()
        yield
    finally:
        for p, own in params:
            p.data = p.data.to(own)
        for m, name, b in buffers:
            m._buffers[name] = b


def deviation(values: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """How far per-token values are from their float32 reference: max and mean |diff|, and the mean diff (a bias)."""
    diff = values.astype(np.float64) - reference.astype(np.float64)
    if not diff.size:
        return {"max_abs_diff": 0.0, "mean_abs_diff": 0.0, "mean_diff": 0.0}
    return {"max_abs_diff": float(np.abs(diff).max()), "mean_abs_diff": float(np.abs(diff).mean()),
            "mean_diff": float(diff.mean())}


def fp32_deviation(plan, head, batch, nll: np.ndarray) -> dict:
    """How far the reduced-precision per-token NLL of one batch is from float32, and whether that is past the
    limits (formats/schema.py FP32_LIMITS): summary.json's fp32_check."""
    d = deviation(nll, float32_nll(plan, head, batch))
    return {"dtype": dtype_name(plan.dtype), "tokens": int(nll.size), "max_abs_diff": d["max_abs_diff"],
            "mean_abs_diff": d["mean_abs_diff"], "mean_nll_diff": d["mean_diff"],
            "warn": exceeds_fp32_limits(d["mean_abs_diff"], d["mean_diff"]), "limits": dict(FP32_LIMITS)}


def fp32_pair_deviation(plan_b, head_b, plan_o, head_o, batch, stats: dict[str, np.ndarray]) -> dict:
    """The paired pass's check: its per-token statistics (by role, PAIR_CHECKED) of one batch against float32."""
    reference = float32_pair(plan_b, head_b, plan_o, head_o, batch)
    statistics = {role: deviation(stats[role], reference[role]) for role in PAIR_CHECKED}
    dtypes = dict.fromkeys(dtype_name(p.dtype) for p in (plan_b, plan_o))
    return {"dtype": " / ".join(dtypes), "tokens": int(batch.n_targets), "statistics": statistics,
            "warn": any(exceeds_fp32_limits(d["mean_abs_diff"], d["mean_diff"]) for d in statistics.values()),
            "limits": dict(FP32_LIMITS)}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def require_finite_loss(nll: np.ndarray, batch, model_name: str, dtype: torch.dtype | None = None) -> None:
    """Refuse a NaN or inf loss, naming the document it came from (in float16: as the overflow it is)."""
    bad = ~np.isfinite(nll)
    if bad.any():
        doc = batch.docs[int(batch.doc_ids[np.argmax(bad)])]
        seen = f"{model_name} produced a non-finite loss on {doc.source} (document {doc.doc_id})"
        if dtype == torch.float16:
            raise LossgapError(f"{seen} in float16: its activations overflow float16's range (largest value 65504)",
                               "use --dtype bfloat16 or --dtype float32; results up to the previous batch are kept")
        raise LossgapError(seen, "try --dtype float32; results up to the previous batch are kept")
