"""Resuming a forward pass part-way down the decoder: the residual stream entering decoder layer `b`, kept from an
earlier pass over the same batch, stands in for the layers before `b`, which then do no work.

Why: the layer attribution (run/layers.py) scores many hybrids of a fine-tuned pair on one sample, and a hybrid
whose first k layers (and embeddings) are all one model's computes, up to layer k, exactly what that model did. The
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
from .hybrid import decoder_layers, layer_of


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


def shared_prefix(params: Iterable[str], taken: set[str], embeddings: set[str], n_layers: int
                  ) -> tuple[str | None, int]:
    """For a hybrid that takes the parameters `taken` from the other model and the rest from the baseline: which
    model ("base" or "other") its embeddings and first k decoder layers all come from, and k (None, 0 when its
    embeddings are mixed). `embeddings` are the parameters used before the first layer."""
    by_layer: dict[int, set[str]] = {}
    for name in params:
        layer = layer_of(name)
        if layer is not None:
            by_layer.setdefault(layer, set()).add(name)
    best: tuple[str | None, int] = (None, 0)
    for source, same in (("base", lambda names: not names & taken), ("other", lambda names: names <= taken)):
        if not same(embeddings):
            continue
        k = 0
        while k < n_layers and same(by_layer.get(k, set())):
            k += 1
        if k > best[1]:
            best = (source, k)
    return best
