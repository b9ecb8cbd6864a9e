"""Regional compilation (`--compile`): torch.compile each decoder layer once, with dynamic shapes.

Why per layer: the decoder layers are one repeated block, so one graph serves all of them and every batch shape (the
docs plan makes many), it compiles in seconds rather than minutes, and it fuses what eager PyTorch runs as separate
passes over memory (RMSNorm's float32 upcast, rotary embedding, SiLU x up, residual adds), which is about a third of
a small model's time on a CPU. The embedding, the final norm and lossgap's output head stay eager.

Fused kernels round less often than eager bf16, so per-token NLL moves within the dtype's tolerance. A check at start
scores a few synthetic documents compiled and eager (and, below float32, in float32) and refuses a compiled model
that is farther from the reference than eager is.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from ..data.layout import synthetic_row
from ..errors import ModelError
from .forward import eager, float32_nll, score_batch
from .tolerances import tolerance

CHECK_LENGTHS = (40, 25, 63)  # synthetic documents packed into one row: several segments, odd lengths
# Graphs one decoder-layer code object may hold: a process adds one per plan (attention function), batch-shape class
# (one row or several) and dtype it runs, for every model of that class. Dynamo's default limit (8) is reached by a
# comparison over several plans, and past it the layers run eager with only a log line to say so.
RECOMPILE_LIMIT = 64
_COMPILED: weakref.WeakSet = weakref.WeakSet()  # models whose layers are compiled: each is compiled once


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: the modules transformers declares as not to be split across devices."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ModelError(f"{model.config.model_type}: lossgap cannot find its decoder layers to compile "
                         f"(the model declares no _no_split_modules)", "run without --compile")
    return layers


def compile_layers(model: torch.nn.Module) -> str:
    """Compile every decoder layer in place (once per model); returns the layer class compiled."""
    if not hasattr(torch.compiler, "set_stance"):  # the check's eager reference needs it
        raise ModelError(f"--compile needs torch 2.6 or newer (this is {torch.__version__})",
                         "upgrade torch, or run without --compile")
    layers = decoder_layers(model)
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # renamed in torch 2.7
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    if model not in _COMPILED:
        for layer in layers:
            layer.compile(dynamic=True)
        _COMPILED.add(model)
    return type(layers[0]).__name__


def is_compiled(model: torch.nn.Module) -> bool:
    """Whether compile_layers compiled this model's layers."""
    return model in _COMPILED


def check_batches(plan, vocab_size: int) -> list:
    """Synthetic documents packed into one row, batched by the plan itself."""
    rng = np.random.default_rng(2)
    return list(plan.batches(synthetic_row([rng.integers(0, vocab_size, n) for n in CHECK_LENGTHS], plan.k,
                                           "compile check")))


def check_compiled(plan, head, vocab_size: int, model_name: str) -> dict:
    """Per-token NLL of the compiled layers against eager ones on the same batches (and against float32 below it).
    Kept only if no farther from the reference than eager (float32: within 1e-4 of eager)."""
    batches = check_batches(plan, vocab_size)
    try:
        compiled = np.concatenate([score_batch(plan, head, b) for b in batches])
    except Exception as e:  # torch.compile failures: no C++ compiler, an op inductor cannot lower, ...
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise ModelError(f"--compile: torch.compile failed on {model_name} ({type(e).__name__}: {first})",
                         "run without --compile") from None
    with eager():
        plain = np.concatenate([score_batch(plan, head, b) for b in batches])
    low_precision = plan.dtype != torch.float32
    reference = np.concatenate([float32_nll(plan, head, b) for b in batches]) if low_precision else plain
    compiled_diff = float(np.abs(compiled.astype(np.float64) - reference).max())
    eager_diff = float(np.abs(plain.astype(np.float64) - reference).max())
    tol = tolerance("nll", plan.dtype)
    passed = bool(np.isfinite(compiled).all()) and (
        compiled_diff <= 1.5 * eager_diff + tol if low_precision else compiled_diff <= tol)
    result = {"tokens": int(compiled.size), "reference": "float32 eager" if low_precision else "eager",
              "max_abs_diff": compiled_diff, "eager_max_abs_diff": eager_diff,
              "passed": passed}
    if not passed:
        raise ModelError(f"--compile: on {model_name} the compiled layers' per-token NLL is {compiled_diff:.3g} from "
                         f"the {result['reference']} reference (eager: {result['eager_max_abs_diff']:.3g})",
                         "run without --compile, and report the model and torch version to lossgap")
    return result
