"""Will two models fit together? The paired pass holds the baseline and another model at once; a comparison checks,
before it loads any model, that both fit with room for a batch, and refuses with the remedies if not (never a silent
fallback to one model at a time, which would change what is computed)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import ModelConfig
from ..errors import ModelError
from .devices import free_on, resolve_device, resolve_dtype
from .model import load_config

# room for one batch's activations and the paired head's tiles, besides the weights, as a share of them (at least
# WORKING_MIN): generous, since a batch that does not fit is retried in halves but the weights must fit
WORKING_SHARE = 0.15
WORKING_MIN = 512 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class ModelShape:
    """What a model will take, known from its config alone before any weight is read."""

    weight_bytes: int  # its weights in the dtype it will run in
    vocab: int  # rows of its output projection: the entries of its predictive distribution
    architecture: str = ""  # the model's class
    parameters: tuple[tuple[str, tuple[int, ...]], ...] = ()  # every parameter's name and shape (--layers' check)


def model_shape(cfg: ModelConfig) -> ModelShape:
    """The model built on the meta device from its config: no weights are read, no memory is taken."""
    from transformers import AutoModelForCausalLM

    config = load_config(cfg)  # a broken config.json is refused here, naming the file
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    dtype = resolve_dtype(cfg.dtype, resolve_device(cfg.device))
    return ModelShape(sum(p.numel() for p in model.parameters()) * torch.finfo(dtype).bits // 8,
                      model.get_output_embeddings().weight.shape[0], type(model).__name__,
                      tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))



def available_bytes(cfg: ModelConfig) -> int:
    """Memory the models may take: free memory on the GPU (all visible GPUs with --device-map), else the host's."""
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        gpus = range(torch.cuda.device_count()) if cfg.device_map else [torch.cuda.current_device()]
        return sum(free_on(torch.device("cuda", i)) for i in gpus)
    return free_on(device)


def head_bytes(shape: ModelShape) -> int:
    """The output head's weight in the run dtype: the first parameter with a row per vocabulary entry."""
    numel = sum(math.prod(dims) for _, dims in shape.parameters) or 1
    rows = next((math.prod(dims) for _, dims in shape.parameters if dims and dims[0] == shape.vocab), 0)
    return rows * shape.weight_bytes // numel


def require_room_for_pair(models: dict[str, ModelConfig], baseline: str,
                          shapes: dict[str, ModelShape] | None = None, layers: bool = False) -> dict:
    """Refuse a paired pass whose baseline and largest other model do not fit in memory together (checked before any
    model loads; `shapes`: model_shape of each, if known). With `layers` (--layers) one more output head is held,
    the interpolated one. Returns the figures, for the comparison's record."""
    shapes = shapes or {name: model_shape(cfg) for name, cfg in models.items()}
    sizes = {name: shapes[name].weight_bytes for name in models}
    largest = max((n for n in sizes if n != baseline), key=sizes.get)
    weights = sizes[baseline] + sizes[largest]
    need = weights + max(WORKING_MIN, int(WORKING_SHARE * weights)) + (head_bytes(shapes[baseline]) if layers else 0)
    free = available_bytes(models[baseline])
    if need > free:
        raise ModelError(
            f"{baseline} ({sizes[baseline] / GIB:.1f} GiB) and {largest} ({sizes[largest] / GIB:.1f} GiB) do not fit "
            f"in memory together for the paired pass: {need / GIB:.1f} GiB needed with a batch, {free / GIB:.1f} GiB "
            "free",
            "spread the models over several GPUs with --device-map auto, shard them with --tp under torchrun, use a "
            "smaller --dtype, or skip the paired statistics with --no-explain",
        )
    return {"weight_bytes": sizes, "needed_bytes": need, "free_bytes": free}
