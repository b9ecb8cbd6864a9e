"""Resuming a forward pass part-way down the decoder: the residual stream entering decoder layer `b`, kept from an
earlier pass over the same batch, stands in for the layers before `b`, which then do no work.

Why: the layer attribution (run/layers.py) scores many hybrids of a fine-tuned pair on one sample, and a hybrid
whose parameters read before layer k are all one model's computes, up to layer k, exactly what that model did. The
two models' states at a few layer boundaries are kept from the interpolation's ends (α = 0 is the baseline, α = 1
the other model), and each hybrid starts from the latest boundary its prefix allows. The layers after it run as
they always do (the plan's attention, rotary embedding and mask are built by the model's own forward), so the result
is the full pass's, bit for bit.

A layer before the boundary gets, for that pass only, an instance forward that returns its input (the last one the
kept state), as accelerate does for offloading; a compiled model (`--compile`) traces the layers' own forwards, so
it is never resumed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

from .compiled import is_compiled
from .hybrid import decoder_layers, paths


@contextlib.contextmanager
def kept_states(model: torch.nn.Module, boundaries: Iterable[int], into: dict[int, list[torch.Tensor]]
                ) -> Iterator[None]:
    """While the block runs, each pass appends to into[b] a CPU copy of the residual stream entering decoder layer
    b (for b = the number of layers: leaving the last one, before the final norm), b >= 1."""
    layers = decoder_layers(model)

    def keeper(b: int):
        def keep(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            into.setdefault(b, []).append(hidden.detach().to("cpu", copy=True))
        return keep

    handles = [layers[b - 1].register_forward_hook(keeper(b)) for b in sorted(set(boundaries)) if b >= 1]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def resumed(model: torch.nn.Module, boundary: int, hidden: torch.Tensor) -> Iterator[None]:
    """The model's next pass with decoder layers [0, boundary) skipped: the last of them returns `hidden` (the
    kept residual stream entering layer `boundary`, [B, L, D], the batch's own), the others their input."""
    layers = decoder_layers(model)
    if boundary < 1:
        yield
        return

    def passes(hidden_states, *args, **kwargs):
        return hidden_states

    def kept(hidden_states, *args, **kwargs):
        if hidden_states.shape != hidden.shape:
            raise RuntimeError(f"a kept state of shape {tuple(hidden.shape)} cannot resume a batch of shape "
                               f"{tuple(hidden_states.shape)}")
        return hidden.to(device=hidden_states.device, copy=True)  # the model's own to write into

    skipped = list(layers[:boundary])
    try:
        for layer in skipped[:-1]:
            layer.forward = passes
        skipped[-1].forward = kept
        yield
    finally:
        for layer in skipped:
            layer.__dict__.pop("forward", None)


def can_resume(model: torch.nn.Module) -> bool:
    """Whether passes of this model may start part-way: not when its layers are compiled, or already have an
    instance forward (accelerate's offloading hooks)."""
    return not is_compiled(model) and not any("forward" in layer.__dict__ for layer in decoder_layers(model))


@contextlib.contextmanager
def recorded_reads(model: torch.nn.Module, into: list[set[str]]) -> Iterator[None]:
    """While the block runs, the model's next forward pass fills `into` (emptied first) with n + 1 sets: into[b] is
    every parameter (by its first path) read before decoder layer b starts, into[n] before the last layer ends.
    Recorded, not inferred from names, so a parameter that runs before the layers without "embed" in its name, or a
    module shared by several layers, counts where it is read."""
    first = {path: name for name, held in paths(model).items() for path in held}
    layers = decoder_layers(model)
    reads: set[str] = set()
    into.clear()

    def read(names: list[str]):
        def hook(module, args):
            if len(into) <= len(layers):
                reads.update(names)
        return hook

    def marker(module, *rest):
        if len(into) <= len(layers):
            into.append(set(reads))

    handles = []
    for path, module in model.named_modules():
        names = [first[f"{path}.{attr}" if path else attr] for attr, p in module._parameters.items() if p is not None]
        if names:
            handles.append(module.register_forward_pre_hook(read(names)))
    handles += [layer.register_forward_pre_hook(marker) for layer in layers]
    handles.append(layers[-1].register_forward_hook(marker))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def shared_prefix(reads: list[set[str]], taken: frozenset[str]) -> tuple[str | None, int]:
    """For a hybrid that takes the parameters `taken` from the other model and the rest from the baseline: the model
    ("base" or "other") whose parameters are all it reads before decoder layer k, for the largest such k, and k
    (None, 0 when its first layer's input is neither model's). `reads` as recorded_reads fills it."""
    best: tuple[str | None, int] = (None, 0)
    for source, same in (("base", lambda names: not names & taken), ("other", lambda names: names <= taken)):
        k = max((b for b, names in enumerate(reads) if same(names)), default=0)
        if k > best[1]:
            best = (source, k)
    return best
