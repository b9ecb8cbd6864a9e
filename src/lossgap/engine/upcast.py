"""Float32 references without a float32 copy of the model. The float32 check scores a few tokens in float32 to say
how far the run's dtype moves the NLL; a float32 copy of the whole model would need twice a bf16 model's memory (an
out-of-memory at start-up on a GPU that holds the model in bf16 only just). Here each module's own reduced-precision
parameters and buffers are put in float32 as the module runs and given back right after: the extra memory is one
module's weights (one Linear), and the model is left exactly as it was (the very tensors are put back, so a batch
scored after the check equals the same batch scored before it).

The embedding is not copied at all: a lookup followed by a cast to float32 is exactly the lookup in a float32 table,
so its output is cast. The output head reads its weight directly (engine/head.py), so it upcasts tile by tile.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


def _low_precision(t: torch.Tensor | None) -> bool:
    return t is not None and t.is_floating_point() and t.dtype != torch.float32


def _own_low_precision(module: torch.nn.Module) -> bool:
    return (any(_low_precision(p) for p in module.parameters(recurse=False))
            or any(_low_precision(b) for b in module._buffers.values()))


class _Upcaster:
    """The hooks' state: per module, a stack of what was swapped in (modules may run nested or twice)."""

    def __init__(self):
        self.frames: dict[torch.nn.Module, list[list]] = {}

    def before(self, module: torch.nn.Module, args) -> None:
        saved = []
        for p in module.parameters(recurse=False):
            if _low_precision(p):
                saved.append((p, None, p.data))
                p.data = p.data.float()
        for name, b in module._buffers.items():
            if _low_precision(b):
                saved.append((module, name, b))
                module._buffers[name] = b.float()
        self.frames.setdefault(module, []).append(saved)

    def after(self, module: torch.nn.Module, args, output) -> None:
        stack = self.frames.get(module)
        if stack:
            _restore(stack.pop())

    def restore_all(self) -> None:
        """Whatever an exception left in float32 (a module that raised never reached its after-hook)."""
        for stack in self.frames.values():
            while stack:
                _restore(stack.pop())


def _restore(saved: list) -> None:
    for holder, name, original in reversed(saved):
        if name is None:
            holder.data = original
        else:
            holder._buffers[name] = original


def _embedding_in_float32(module, args, output):
    return output.float() if output.is_floating_point() else output


@contextmanager
def float32_modules(roots: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Every module under `roots` computes in float32 inside the block, one module's weights upcast at a time."""
    upcaster = _Upcaster()
    hooks, seen = [], set()
    for root in roots:
        for module in root.modules():
            if module in seen:
                continue
            seen.add(module)
            if isinstance(module, torch.nn.Embedding):
                if _low_precision(module.weight):
                    hooks.append(module.register_forward_hook(_embedding_in_float32))
            elif _own_low_precision(module):
                hooks.append(module.register_forward_pre_hook(upcaster.before))
                hooks.append(module.register_forward_hook(upcaster.after))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        upcaster.restore_all()
