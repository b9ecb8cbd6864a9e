"""Hybrids of a fine-tuned pair, built inside the baseline's own model without a third copy of the weights: a block
of the other model's parameters swapped in by reference, or every parameter interpolated between the two, one
module at a time while that module runs. The layer attribution (run/layers.py) scores them with the baseline's
plan and head, so a hybrid's NLL is computed exactly as the baseline's own.

A parameter is named by its first path in the model; a tied weight (the input embeddings and the output head of
most small models) is one parameter under two paths, swapped and interpolated as one, and belongs to the
embeddings' block.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import UsageError

LAYER_INDEX = re.compile(r"\.(\d+)\.")  # the decoder layer a parameter belongs to: "model.layers.12.mlp.up_proj"


@dataclass(frozen=True)
class Block:
    """A group of parameters scored as a unit: "embeddings", "layers 0-7", ..., "final norm and head"."""

    name: str
    params: tuple[str, ...]
    layers: tuple[int, int] | None = None  # first and last decoder layer, for a group of layers


def parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Each parameter once, by its first path (a tied weight under the first of its paths)."""
    return dict(model.named_parameters())


def paths(model: torch.nn.Module) -> dict[str, list[str]]:
    """Each parameter's first path -> every path it is held under (more than one for a tied weight)."""
    first: dict[int, str] = {}
    out: dict[str, list[str]] = {}
    for path, param in model.named_parameters(remove_duplicate=False):
        name = first.setdefault(id(param), path)
        out.setdefault(name, []).append(path)
    return out


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of decoder layers: the ModuleList of config.num_hidden_layers modules in its base model."""
    n = model.config.num_hidden_layers
    for module in model.base_model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise UsageError(f"{type(model).__name__}: no stack of {n} decoder layers found, so layers cannot be attributed",
                     "drop --layers for this model")


def layer_of(name: str) -> int | None:
    """The decoder layer a parameter path belongs to, or None (embeddings, final norm, head)."""
    found = LAYER_INDEX.search(name)
    return int(found.group(1)) if found else None


def require_same_shapes(base: torch.nn.Module, other: torch.nn.Module, names: tuple[str, str]) -> None:
    """Refuse a pair whose architectures or parameter shapes differ: no hybrid of them exists."""
    if type(base) is not type(other):
        raise UsageError(f"--layers: {names[0]} is a {type(base).__name__} and {names[1]} a {type(other).__name__}; "
                         "layers can only be attributed between two models of one architecture",
                         "drop --layers, or compare a model with its own fine-tune")
    a, b = paths(base), paths(other)
    shapes_a = {n: tuple(p.shape) for n, p in parameters(base).items()}
    shapes_b = {n: tuple(p.shape) for n, p in parameters(other).items()}
    if a != b or shapes_a != shapes_b:
        differ = sorted(set(shapes_a.items()) ^ set(shapes_b.items()))[:3]
        raise UsageError(f"--layers: {names[0]} and {names[1]} differ in their parameters ({differ}...), so no "
                         "hybrid of the two can be built", "drop --layers, or compare a model with its own fine-tune")
    theirs = parameters(other)
    moved = [n for n, p in parameters(base).items() if p.device != theirs[n].device or p.dtype != theirs[n].dtype]
    if moved:
        raise UsageError(f"--layers: {names[0]}'s and {names[1]}'s copies of {moved[0]} (and {len(moved) - 1} more) "
                         "are on different devices or in different dtypes, so one cannot stand in for the other",
                         "load both on one device (drop --device-map), or drop --layers")


def blocks(model: torch.nn.Module, groups: int) -> list[Block]:
    """The embeddings, the decoder layers in `groups` contiguous groups of (nearly) equal size, and the rest after
    them (final norm and head); every parameter in exactly one block."""
    n = model.config.num_hidden_layers
    groups = max(1, min(groups, n))
    bounds = [round(i * n / groups) for i in range(groups + 1)]
    by_layer: dict[int, list[str]] = {}
    before, after = [], []
    for name in parameters(model):
        layer = layer_of(name)
        if layer is not None:
            by_layer.setdefault(layer, []).append(name)
        elif "embed" in name or "wte" in name or "wpe" in name:
            before.append(name)
        else:
            after.append(name)
    tied = any(len(p) > 1 for p in paths(model).values())
    out = [Block("embeddings and head (tied)" if tied else "embeddings", tuple(before))]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        names = tuple(p for i in range(lo, hi) for p in by_layer.get(i, []))
        out.append(Block(f"layers {lo}-{hi - 1}" if hi - 1 > lo else f"layer {lo}", names, (lo, hi - 1)))
    out.append(Block("final norm" if tied else "final norm and head", tuple(after)))
    return [b for b in out if b.params]


def _holders(model: torch.nn.Module, path: str) -> tuple[torch.nn.Module, str]:
    module_path, _, attr = path.rpartition(".")
    return model.get_submodule(module_path), attr


@contextlib.contextmanager
def swapped(model: torch.nn.Module, other: torch.nn.Module, names: tuple[str, ...]) -> Iterator[None]:
    """`model` with the parameters `names` taken from `other` by reference (every path of a tied one); restored on
    exit. No weight is copied."""
    held = paths(model)
    theirs = parameters(other)
    saved = []
    try:
        for name in names:
            for path in held[name]:
                module, attr = _holders(model, path)
                saved.append((module, attr, module._parameters[attr]))
                module._parameters[attr] = theirs[name]
        yield
    finally:
        for module, attr, param in reversed(saved):
            module._parameters[attr] = param


@contextlib.contextmanager
def interpolated(model: torch.nn.Module, other: torch.nn.Module, alpha: float, head: torch.nn.Module) -> Iterator[None]:
    """`model` as θ_model + alpha (θ_other − θ_model) (torch.lerp: exact at alpha 0 and 1): each module's
    interpolated parameters exist only while it runs (hooks), so at most one module's extra copy is alive at a time;
    the output head `head`, which lossgap reads outside the model's forward, gets its interpolated weight for the
    whole block (one extra head matrix)."""
    theirs = {id(p): q for p, q in zip(model.parameters(), other.parameters(), strict=True)}
    mixed = {}

    def before(module, args):
        saved = {}
        for attr, param in module._parameters.items():
            if param is not None and id(param) in theirs:
                saved[attr] = param
                module._parameters[attr] = torch.nn.Parameter(torch.lerp(param, theirs[id(param)], alpha),
                                                               requires_grad=False)
        mixed[id(module)] = saved

    def after(module, args, output):
        for attr, param in mixed.pop(id(module), {}).items():
            module._parameters[attr] = param

    handles = []
    head_saved = dict(head._parameters)
    try:
        for module in model.modules():
            if module is not head and any(p is not None for p in module._parameters.values()):
                handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
        before(head, ())
        yield
    finally:
        for h in handles:
            h.remove()
        mixed.pop(id(head), None)
        head._parameters.update(head_saved)


ROWS_PER_CHUNK = 4096  # rows of a matrix whose difference is held at once in float32


@torch.inference_mode()
def weight_change(base: torch.nn.Module, other: torch.nn.Module) -> list[dict]:
    """Per parameter (each once): its decoder layer, element count, the squared norms ‖W_base‖² and ‖W_other −
    W_base‖² (float64 sums over float32 chunks, no full-size copy) and whether the two are identical. Squared norms
    add up, so a layer's or the model's relative change is sqrt(Σ diff² / Σ base²) over its parameters."""
    theirs = parameters(other)
    out = []
    for name, w in parameters(base).items():
        v = theirs[name]
        base_sq = diff_sq = 0.0
        a, b = (t.detach().reshape(t.shape[0] if t.dim() else 1, -1) for t in (w, v))
        for lo in range(0, a.shape[0], ROWS_PER_CHUNK):
            x, y = a[lo:lo + ROWS_PER_CHUNK].float(), b[lo:lo + ROWS_PER_CHUNK].to(a.device).float()
            base_sq += float(x.double().square().sum())
            diff_sq += float((y - x).double().square().sum())
        out.append({"name": name, "layer": layer_of(name), "numel": w.numel(), "base_sq": base_sq,
                    "diff_sq": diff_sq, "identical": bool(torch.equal(w, v.to(w.device)))})
    return out
