"""Where one plan's time goes: torch profiler over the same Pile-like documents as throughput.py, the matmuls'
achieved FLOP/s against the matmul peak measured in the same process, and the top ops by self time.

  python benchmarks/profile_plan.py                          # docs plan, bf16, SmolLM2-135M shape, T=4096, CPU
  python benchmarks/profile_plan.py --plan nomask --mask causal --dtype float32
  python benchmarks/profile_plan.py --plan varlen+compile                  # with lossgap's --compile
"""

from __future__ import annotations

import argparse

import torch
from throughput import ARCHS, build_model, matmul_peak, pile_like_documents, run_plan
from torch.profiler import ProfilerActivity, profile

from lossgap.data.layout import packed_rows, windows
from lossgap.engine.plans import make_plan


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="smollm2-135m", choices=sorted(ARCHS))
    p.add_argument("--plan", default="docs")
    p.add_argument("--mask", default="block")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=12288)
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    dtype = getattr(torch, a.dtype)
    model = build_model(a.arch, dtype, "cpu", a.seq_len)
    docs = pile_like_documents(a.tokens, model.config.vocab_size, a.seq_len, 400)
    positions = "restart" if a.mask == "block" else "continuous"
    plan = make_plan(a.plan.partition("+")[0], model, a.mask, positions, 1, 1)  # PLAN+compile: see throughput
    computed = sum(b.input_ids.numel() for rows in windows(packed_rows(docs, a.seq_len, 1), 1 << 16)
                   for b in plan.batches(rows))
    run_plan(model, a.plan, a.mask, docs[:4], a.seq_len, 1, None)  # warm-up
    peak = matmul_peak(dtype, "cpu")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tokens, elapsed, _ = run_plan(model, a.plan, a.mask, docs, a.seq_len, 1, None)
    self_time = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(self_time.values())
    mm_seconds = self_time.get("aten::mm", 0) / 1e6
    flops = 2 * sum(p.numel() for p in model.parameters()) * computed
    print(f"# {a.arch} {a.plan} {a.mask} {a.dtype} T={a.seq_len}: {tokens} tokens computed as {computed} "
          f"({computed / tokens:.3f}x with padding); {tokens / elapsed:,.0f} tok/s under the profiler")
    if mm_seconds:
        print(f"matmuls {mm_seconds:.2f} s = {flops / mm_seconds / 1e12:.2f} TFLOP/s = {flops / mm_seconds / peak:.0%} "
              f"of the {peak / 1e12:.2f} TFLOP/s peak measured here")
    for key, t in sorted(self_time.items(), key=lambda kv: -kv[1])[: a.top]:
        print(f"{key:55s} {t / total:6.1%}")


if __name__ == "__main__":
    main()
