"""Eager forwards for the decoder's elementwise blocks that write into the tensors they create instead of allocating
new ones: the model's own arithmetic, bit for bit, with fewer fresh tensors.

Why: on a CPU, eager bf16 spends about a tenth of a small model's time in RMSNorm's float32 upcast and SiLU x up,
and much of that is the allocator's (a fresh activation-sized tensor per operation, page-faulted in again each
time). Writing in place skips those tensors without changing a single rounding, so the run's numbers are exactly the
model's (`--compile` fuses the same work, but rounds differently and costs a compile).

A module is given a lean forward only where it has the expected parts (an RMSNorm's weight and variance_epsilon; a
gated MLP's gate_proj, up_proj, down_proj and act_fn) and the lean forward reproduces the module's own output bit
for bit on a probe input with the module's own weights: a model whose norm or MLP computes something else (Gemma's
1 + weight, a hub kernel) keeps its own forward. The forwards are set on the instances inside the block only, and
only while autograd is off (in-place activations would break a backward pass) and the model is not compiled
(`--compile` traces the model's own forwards).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .compiled import is_compiled

PROBE_SHAPE = (2, 5)  # batch and positions of the probe input


def rms_norm_forward(self, hidden: torch.Tensor) -> torch.Tensor:
    """Llama's RMSNorm: the float32 copy is normalised in place."""
    h = hidden.to(torch.float32, copy=True)
    variance = h.pow(2).mean(-1, keepdim=True)
    h.mul_(torch.rsqrt(variance.add_(self.variance_epsilon)))
    return self.weight * h.to(hidden.dtype)


def gated_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    """down(act(gate(x)) * up(x)) with the activation and the product written into gate(x)'s tensor."""
    gate = self.gate_proj(x)
    if type(self.act_fn).__name__ in ("SiLU", "SiLUActivation"):
        F.silu(gate, inplace=True)
    else:
        gate = self.act_fn(gate)
    return self.down_proj(gate.mul_(self.up_proj(x)))


def _is_rms_norm(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (type(module).__name__.endswith("RMSNorm") and isinstance(weight, torch.Tensor) and weight.dim() == 1
            and hasattr(module, "variance_epsilon"))


def _is_gated_mlp(module: torch.nn.Module) -> bool:
    return all(isinstance(getattr(module, name, None), torch.nn.Module)
               for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))


# (which modules, their lean forward)
CANDIDATES: tuple[tuple[Callable, Callable], ...] = ((_is_rms_norm, rms_norm_forward),
                                                     (_is_gated_mlp, gated_mlp_forward))


def _probe_input(module: torch.nn.Module) -> torch.Tensor:
    """Hidden states the module takes: its own input width, dtype and device, seeded, with a wide range of values."""
    first = next(module.parameters())
    width = first.shape[0] if first.dim() == 1 else first.shape[1]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*PROBE_SHAPE, width, generator=generator) * torch.logspace(-2, 1, width)
    return x.to(device=first.device, dtype=first.dtype)


@torch.inference_mode()
def reproduces(module: torch.nn.Module, forward: Callable) -> bool:
    """Whether `forward` gives the module's own output, bit for bit, on the probe input."""
    try:
        x = _probe_input(module)
        return torch.equal(forward(module, x), type(module).forward(module, x))
    except Exception:  # a module with the parts but other shapes or arguments: it keeps its own forward
        return False


def _hook_free(module: torch.nn.Module) -> bool:
    """No forward hook on the module or below it, none global: a probe then runs nothing but the arithmetic (the
    float32 check's upcasting hooks would change the weights' dtype under it, and a caller's hooks would see it)."""
    hooks = torch.nn.modules.module
    return not (hooks._global_forward_hooks or hooks._global_forward_pre_hooks) and not any(
        m._forward_hooks or m._forward_pre_hooks for m in module.modules())


_VERIFIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(class, dtype): lean forward or None}


def lean_targets(model: torch.nn.Module) -> list[tuple[torch.nn.Module, Callable]]:
    """The model's modules that take a lean forward, with it. Each class and dtype is probed once per model, where
    no hook runs; until then it keeps its own forward. A module whose forward is already replaced on the instance
    (accelerate's offloading hooks) is left as it is."""
    verified = _VERIFIED.setdefault(model, {})
    found = []
    for module in model.modules():
        if "forward" in module.__dict__:
            continue
        for matches, forward in CANDIDATES:
            if not matches(module):
                continue
            key = (type(module), next(module.parameters()).dtype)
            if key not in verified:
                if not _hook_free(module):
                    break
                verified[key] = forward if reproduces(module, forward) else None
            if verified[key] is not None:
                found.append((module, verified[key]))
            break
    return found


@contextmanager
def lean_forwards(model: torch.nn.Module, enabled: bool = True) -> Iterator[int]:
    """The model's norms and gated MLPs on their lean forwards inside the block (yields how many modules), their own
    after it. Nothing is changed while autograd records, or when not enabled."""
    if not enabled or torch.is_grad_enabled() or is_compiled(model):
        yield 0
        return
    targets = lean_targets(model)
    for module, forward in targets:
        module.forward = forward.__get__(module)
    try:
        yield len(targets)
    finally:
        for module, _ in targets:
            module.__dict__.pop("forward", None)
