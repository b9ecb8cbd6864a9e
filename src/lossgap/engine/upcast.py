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
    """The hooks' state: per module, a stack of what was swapped in (modules may run nested or twice).

    The float32 copies live in one flat buffer per device, taken as a stack (a module running inside another takes
    the space after its parent's): a fresh tensor per module and call would leave the allocator's heap fragmented,
    which held 30-50 MiB of resident memory after a SmolLM2 check (benchmarks/RESULTS.md). A module that does not fit
    in what is left gets fresh tensors."""

    def __init__(self, capacity: int = 0):
        self.frames: dict[torch.nn.Module, list[list]] = {}
        self.capacity = capacity  # float32 elements of each device's buffer
        self.buffers: dict[torch.device, torch.Tensor] = {}
        self.top: dict[torch.device, int] = {}

    def _float32(self, t: torch.Tensor, taken: list) -> torch.Tensor:
        device, n = t.device, t.numel()
        top = self.top.get(device, 0)
        if top + n > self.capacity:
            return t.float()
        if device not in self.buffers:
            self.buffers[device] = torch.empty(self.capacity, dtype=torch.float32, device=device)
        self.top[device] = top + n
        taken.append((device, n))
        return self.buffers[device][top:top + n].view(t.shape).copy_(t)

    def before(self, module: torch.nn.Module, args) -> None:
        saved, taken = [], []
        for p in module.parameters(recurse=False):
            if _low_precision(p):
                saved.append((p, None, p.data))
                p.data = self._float32(p.data, taken)
        for name, b in module._buffers.items():
            if _low_precision(b):
                saved.append((module, name, b))
                module._buffers[name] = self._float32(b, taken)
        self.frames.setdefault(module, []).append((saved, taken))

    def after(self, module: torch.nn.Module, args, output) -> None:
        stack = self.frames.get(module)
        if stack:
            self._release(*stack.pop())

    def _release(self, saved: list, taken: list) -> None:
        _restore(saved)
        for device, n in taken:
            self.top[device] -= n

    def restore_all(self) -> None:
        """Whatever an exception left in float32 (a module that raised never reached its after-hook)."""
        for stack in self.frames.values():
            while stack:
                self._release(*stack.pop())
        self.buffers.clear()


def _own_numel(module: torch.nn.Module) -> int:
    """Elements of a module's own reduced-precision parameters and buffers: what its upcast takes."""
    own = [*module.parameters(recurse=False), *module._buffers.values()]
    return sum(t.numel() for t in own if _low_precision(t))


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
    hooks, seen, largest = [], set(), 0
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
                largest = max(largest, _own_numel(module))
    upcaster.capacity = largest
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        upcaster.restore_all()
