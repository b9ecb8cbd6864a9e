"""Where a model runs and in what dtype, and how much memory is free there: the device and dtype `auto` resolves to
on this machine, what only CUDA can run, and free memory on a GPU or the host."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import torch

from ..errors import UsageError

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # --dtype names


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available", "use --device cpu")
    return torch.device(name)


BF16_SPEEDUP = 1.25  # `--dtype auto` takes bf16 on a CPU where its matmuls measure at least this much faster


def cpu_has_fast_bf16() -> bool:
    """avx512_bf16 or AMX, and bf16 matmuls measured faster than fp32 ones here. The flags alone can mislead: where
    oneDNN is held to an older ISA (ONEDNN_MAX_CPU_ISA) bf16 falls back to a reference kernel 100x slower, and
    without them bf16 is emulated, about 3x slower than fp32, so nothing is measured."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return ("avx512_bf16" in flags or "amx_bf16" in flags) and bf16_matmul_speedup() >= BF16_SPEEDUP


@functools.cache
def bf16_matmul_speedup(rows: int = 128, width: int = 1024) -> float:
    """fp32 time over bf16 time of one [rows, width] x [width, width] CPU matmul, best of 3 after a warm-up each
    (a 2-core EPYC with avx512_bf16: 2-6x, in ~0.1 s of which most is the matmul libraries' first call, which the
    model's first batch would pay otherwise). Once per process."""
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.full((rows, width), 0.5, dtype=dtype), torch.full((width, width), 0.25, dtype=dtype)
        start = time.perf_counter()
        a @ b
        times = [time.perf_counter() - start]  # the warm-up counts only if it is the best (a reference kernel)
        for _ in range(3 if times[0] < 0.05 else 0):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        best[dtype] = min(times)
    return best[torch.float32] / max(best[torch.bfloat16], 1e-9)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" or cpu_has_fast_bf16() else torch.float32
    return TORCH_DTYPES[name]


def require_cuda_for_flex(device: torch.device, option: str, fix: str) -> None:
    """FlexAttention runs on CUDA only: on the CPU torch 2.13's inductor fails to compile its template for some batch
    shapes, and transformers' flex attention crashed there ("double free", docs/design.md contract 4)."""
    if device.type != "cuda":
        raise UsageError(f"{option} runs on CUDA only (torch 2.13 cannot compile FlexAttention on the CPU for every "
                         "batch shape)", fix)


def free_on(device: torch.device) -> int:
    """Memory free on one GPU, counting what the caching allocator holds but does not use; the host's for a CPU."""
    if device.type != "cuda":
        return available_ram()
    return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
