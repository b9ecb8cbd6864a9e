"""The logit lens on a pair: each decoder layer's residual stream at the scored positions, through the model's own
final norm and output head, for both models on the same batch; per layer the KL between the two models'
distributions and each model's NLL of the target. A layer's output is captured before the final norm, which the lens
applies to every layer, so at the last layer the lens is the model's own output distribution.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .hybrid import decoder_layers

FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_norm", "norm_f")
TOKENS_PER_CHUNK = 256  # scored tokens whose full distributions are held at once


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The norm the base model applies after its last decoder layer."""
    for name in FINAL_NORMS:
        module = getattr(model.base_model, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise UsageError(f"{type(model).__name__}: no final norm found ({', '.join(FINAL_NORMS)}), so the logit lens "
                     "cannot be applied", "drop --layers for this model")


@contextlib.contextmanager
def captured(model: torch.nn.Module, index: torch.Tensor, out: list) -> Iterator[None]:
    """Each decoder layer's output at the flattened positions `index` appended to `out` while the block runs."""
    def keep(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        out.append(hidden.reshape(-1, hidden.shape[-1])[index.to(hidden.device)])

    handles = [layer.register_forward_hook(keep) for layer in decoder_layers(model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def layer_hidden(plan, batch) -> list[torch.Tensor]:
    """The residual stream after each decoder layer at the batch's scored positions, [N, D] per layer."""
    out: list[torch.Tensor] = []
    with captured(plan.model, batch.flat_index, out):
        plan.hidden_states(batch)
    return out


@torch.inference_mode()
def lens_stats(plan_b, head_b, plan_o, head_o, batch) -> dict[str, torch.Tensor]:
    """Per layer and scored token of the batch: KL(b || o) of the two lenses, and each model's NLL of the target
    ([layers, N] float64 each, summed later per document)."""
    layers = [layer_hidden(plan, batch) for plan in (plan_b, plan_o)]
    norms = [final_norm(plan_b.model), final_norm(plan_o.model)]
    targets = batch.targets
    n_layers, n = len(layers[0]), targets.numel()
    out = {key: torch.zeros(n_layers, n, dtype=torch.float64) for key in ("kl", "nll_b", "nll_o")}
    for layer in range(n_layers):
        for lo in range(0, n, TOKENS_PER_CHUNK):
            rows = slice(lo, min(n, lo + TOKENS_PER_CHUNK))
            logp = []
            for hidden, norm, head in zip((layers[0][layer], layers[1][layer]), norms, (head_b, head_o), strict=True):
                logp.append(F.log_softmax(head.logits(norm(hidden[rows])).float(), dim=-1))
            t = targets[rows].to(logp[0].device)
            out["kl"][layer, rows] = (logp[0].exp() * (logp[0] - logp[1])).sum(-1).double().cpu()
            out["nll_b"][layer, rows] = -logp[0].gather(1, t[:, None])[:, 0].double().cpu()
            out["nll_o"][layer, rows] = -logp[1].gather(1, t[:, None])[:, 0].double().cpu()
    return out
