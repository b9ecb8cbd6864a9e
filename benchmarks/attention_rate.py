"""How fast causal attention runs per document length, against the matmul peak, in one process: the part of a
plan's time that the 2 x parameters MFU convention does not count. Each SDPA backend that runs on the device, and
FlexAttention (compiled, causal BlockMask; what the flex plan runs), on one document of n tokens with grouped KV
heads.

  python benchmarks/attention_rate.py                          # SmolLM2-135M heads (9 of 64, 3 KV), bf16, CPU
  python benchmarks/attention_rate.py --heads 32 --kv-heads 8 --head-dim 128 --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from throughput import _sync, matmul_peak
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def seconds(fn, reps: int, device: str) -> float:
    """Best of 3 timings of reps calls."""
    fn()
    best = float("inf")
    for _ in range(3):
        _sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def rate(name: str, t: float, flops: float, peak: float) -> str:
    """One kernel's time, rate and share of the matmul peak."""
    return f"{name} {t * 1e3:8.2f} ms {flops / t / 1e12:5.2f} TFLOP/s ({flops / t / peak:4.0%} of peak)"


def flex_runner(q, k, v):
    """Compiled FlexAttention with a causal BlockMask over the whole document."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n = q.shape[2]
    mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, n, n, device=q.device.type)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda: compiled(q, k, v, block_mask=mask, enable_gqa=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--lengths", default="128,400,1000,2048,4096")
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention (it compiles once per length)")
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    dtype = getattr(torch, a.dtype)
    peak = matmul_peak(dtype, a.device)
    print(f"# causal SDPA, {a.heads} heads ({a.kv_heads} KV) of {a.head_dim}, {a.dtype} on {a.device}; "
          f"matmul peak {peak / 1e12:.2f} TFLOP/s")
    for n in (int(x) for x in a.lengths.split(",")):
        q = torch.randn(1, a.heads, n, a.head_dim, dtype=dtype, device=a.device)
        k, v = (torch.randn(1, a.kv_heads, n, a.head_dim, dtype=dtype, device=a.device) for _ in range(2))
        flops = 2 * a.heads * n * n * a.head_dim  # QK^T and PV over the causal half
        reps = max(2, 20000 // n)
        cells = []
        for name, backend in BACKENDS.items():
            def run(backend=backend, q=q, k=k, v=v):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            try:
                t = seconds(run, reps if name != "math" else 2, a.device)
            except RuntimeError:  # this backend does not run here (device, dtype or shape)
                continue
            cells.append(rate(name, t, flops, peak))
        if not a.no_flex:
            try:
                t = seconds(flex_runner(q, k, v), reps, a.device)
                cells.append(rate("flex", t, flops, peak))
            except Exception as e:  # no compiler, or FlexAttention does not lower here
                cells.append(f"flex failed ({type(e).__name__})")
        print(f"n={n:5d}  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
