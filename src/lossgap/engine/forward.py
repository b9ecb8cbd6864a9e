"""The forward layer: a batch through a model to per-token results, below any orchestration.

`plan.hidden_states` runs the model (the plan decides masks and attention); the output head turns the hidden states
of the positions that predict a target into per-token columns (columns.py, source "model"). One forward pass serves
every label offset of the same rows. Also here: the float32 re-scoring that reduced-precision and compiled runs are
checked against, switching compiled layers to eager, and refusing non-finite losses.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import numpy as np
import torch

from ..errors import LossgapError
from ..formats.schema import FP32_LIMITS, exceeds_fp32_limits
from .headstats import paired_token_stats
from .upcast import float32_modules

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
    return _pair_stats(head_b, scored_hidden(plan_b, batch), head_o, scored_hidden(plan_o, batch), batch.targets)


@torch.inference_mode()
def forward_pair_batches(plan_b, head_b, plan_o, head_o, batches: list, paired: list[bool],
                         metrics: tuple[str, ...] = ("nll",)) -> list[dict[str, np.ndarray]]:
    """The same rows scoring different targets (label offsets) with both models, one forward pass of each: per batch
    the pair's statistics by role where `paired` (forward_pair), else each model's `metrics` as forward_batches
    computes them (<metric>_b, <metric>_o). Each model's NLL is the one its own run computes: the tiled pass's
    shares its arithmetic, and a fused loss kernel, where one is in use, scores the NLL again."""
    hidden = []
    for plan in (plan_b, plan_o):
        h = plan.hidden_states(batches[0])
        hidden.append(h.reshape(-1, h.shape[-1]))
    device = hidden[0].device
    out = []
    for batch, pair in zip(batches, paired, strict=True):
        index, targets = batch.flat_index.to(device), batch.targets.to(device)
        hb, ho = hidden[0][index], hidden[1][index.to(hidden[1].device)].to(device)
        stats = {}
        if pair:
            stats = paired_token_stats(head_b, hb, head_o, ho, targets)
        for role, head, h in (("b", head_b, hb), ("o", head_o, ho)):
            own = [m for m in metrics if not pair or (m == "nll" and head.kernel != "tiled")]
            stats |= {f"{m}_{role}": v for m, v in head.token_stats(h, targets, tuple(own)).items()} if own else {}
        out.append({role: values.cpu().numpy() for role, values in stats.items()})
    return out


@torch.inference_mode()
def scored_hidden(plan, batch) -> torch.Tensor:
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
def in_float32(plan, head=None):
    """The plan, its model (and head) in float32, eager, inside the block: the reference for reduced-precision and
    compiled runs. One module's weights at a time are upcast (engine/upcast.py): no float32 copy of the model, and
    the model is left exactly as it was, so the batches scored after the check match those scored before it."""
    dtype = plan.dtype
    plan.dtype = torch.float32
    roots = [plan.model] if head is None else [plan.model, head.proj]
    try:
        with float32_modules(roots), head.float32() if head is not None else nullcontext(), eager():
            yield
    finally:
        plan.dtype = dtype


def float32_nll(plan, head, batch) -> np.ndarray:
    """The batch scored by the eager model in float32."""
    with in_float32(plan, head):
        return score_batch(plan, head, batch)


def float32_pair(plan_b, head_b, plan_o, head_o, batch) -> dict[str, np.ndarray]:
    """forward_pair in float32, each model's modules upcast one at a time, then both heads tile by tile."""
    hidden = []
    for plan in (plan_b, plan_o):
        with in_float32(plan):
            hidden.append(scored_hidden(plan, batch))
    with float32_modules([head_b.proj, head_o.proj]), head_b.float32(), head_o.float32(), eager():
        return _pair_stats(head_b, hidden[0], head_o, hidden[1], batch.targets)


def deviation(values: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """How far per-token values are from their float32 reference: max and mean |diff|, and the mean diff (a bias)."""
    diff = values.astype(np.float64) - reference.astype(np.float64)
    if not diff.size:
        return {"max_abs_diff": 0.0, "mean_abs_diff": 0.0, "mean_diff": 0.0}
    return {"max_abs_diff": float(np.abs(diff).max()), "mean_abs_diff": float(np.abs(diff).mean()),
            "mean_diff": float(diff.mean())}


# input tokens the float32 check scores: 2-2.5 % of a 32k-token run's time on an avx512_bf16 CPU, 4-5 % with AMX
# (float32 ~7x slower than bf16 there); 256 would warn falsely on a healthy model (benchmarks/fp32_check.py
# --slice-spread: 1 of 111 such slices of SmolLM2 past FP32_LIMITS' mean diff, none of 55 of 512)
CHECK_TOKENS = 512
CHECK_MIN_TARGETS = 64  # fewer targets in them (a strided window scores only its tail): the prefix is lengthened
CHECKED_LAYERS = "every layer and the output head, in float32, one module's weights at a time"


def check_length(batch) -> int:
    """The first row's positions the float32 check scores again: CHECK_TOKENS, more if they hold fewer than
    CHECK_MIN_TARGETS of the batch's targets."""
    flat = np.sort(batch.flat_index.numpy())
    row0 = flat[flat < batch.input_ids.shape[1]]
    tokens = CHECK_TOKENS
    wanted = min(CHECK_MIN_TARGETS, row0.size)
    if wanted and np.searchsorted(row0, tokens) < wanted:
        tokens = int(row0[wanted - 1]) + 1
    return tokens


def check_slice(batch, tokens: int | None = None) -> tuple:
    """The first row's first check_length positions (or `tokens`): what the float32 check scores again, as (batch,
    mask of this batch's targets it holds)."""
    return batch.first_row_prefix(check_length(batch) if tokens is None else tokens)


def _checked(sub, dtypes: list[str]) -> dict:
    return {"dtype": " / ".join(dict.fromkeys(dtypes)), "tokens": int(sub.n_targets),
            "input_tokens": int(sub.n_input_tokens), "layers": CHECKED_LAYERS}


def fp32_deviation(plan, head, batch, nll: np.ndarray) -> dict | None:
    """How far the reduced-precision per-token NLL of the run is from float32 on the first tokens of a batch
    (check_slice), and whether that is past the limits (formats/schema.py FP32_LIMITS): summary.json's
    fp32_check. None when the slice holds no target (the next batch is checked)."""
    return fp32_deviations(plan, head, [batch], [nll])[0]


def run_check(pair_check: dict, role: str, dtype: torch.dtype) -> dict:
    """One model's own check (fp32_deviation's fields) within the paired pass's check of the same slice."""
    d = pair_check["statistics"][f"nll_{role}"]
    return {"dtype": dtype_name(dtype), "tokens": pair_check["tokens"], "input_tokens": pair_check["input_tokens"],
            "layers": pair_check["layers"], "max_abs_diff": d["max_abs_diff"], "mean_abs_diff": d["mean_abs_diff"],
            "mean_nll_diff": d["mean_diff"], "warn": exceeds_fp32_limits(d["mean_abs_diff"], d["mean_diff"]),
            "limits": dict(FP32_LIMITS)}


def fp32_deviations(plan, head, batches: list, nlls: list[np.ndarray]) -> list[dict | None]:
    """fp32_deviation of several label offsets' batches of the same rows from one float32 forward pass: the slice is
    the longest any of them needs, so each offset's check holds at least its own slice."""
    tokens = max(check_length(b) for b in batches)
    slices = [check_slice(b, tokens) for b in batches]
    with in_float32(plan, head):
        references = [r["nll"] for r in forward_batches(plan, head, [sub for sub, _ in slices])]
    out = []
    for (sub, keep), nll, reference in zip(slices, nlls, references, strict=True):
        if not sub.n_targets:
            out.append(None)
            continue
        d = deviation(nll[keep], reference)
        out.append({**_checked(sub, [dtype_name(plan.dtype)]), "max_abs_diff": d["max_abs_diff"],
                    "mean_abs_diff": d["mean_abs_diff"], "mean_nll_diff": d["mean_diff"],
                    "warn": exceeds_fp32_limits(d["mean_abs_diff"], d["mean_diff"]), "limits": dict(FP32_LIMITS)})
    return out


def fp32_pair_deviation(plan_b, head_b, plan_o, head_o, batch, stats: dict[str, np.ndarray]) -> dict | None:
    """The paired pass's check: its per-token statistics (by role, PAIR_CHECKED) on the same slice against
    float32."""
    sub, keep = check_slice(batch)
    if not sub.n_targets:
        return None
    reference = float32_pair(plan_b, head_b, plan_o, head_o, sub)
    statistics = {role: deviation(stats[role][keep], reference[role]) for role in PAIR_CHECKED}
    return {**_checked(sub, [dtype_name(p.dtype) for p in (plan_b, plan_o)]), "statistics": statistics,
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
