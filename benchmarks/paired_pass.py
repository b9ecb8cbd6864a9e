"""The paired pass against the two single-model passes it replaces, in one process on the same batches.

Two random models of one architecture (seeds 0 and 1; speed does not depend on the weights' values) score the same
Pile-like documents: each alone with the NLL-only head (what `lossgap score` runs), then both together through
`forward.forward_pair` (the paired pass: two forward passes and one pass over both heads' vocabulary tiles for every
statistic). Prints tokens/s, the ratio of the paired pass's throughput to the two single passes run one after the
other ((t_base + t_other) / t_paired; the target is >= 0.9), each variant's working memory, and how far the paired
NLLs are from the single runs'. Rounds alternate the variants, so a slow spell of a shared VM hits all of them.

  python benchmarks/paired_pass.py                           # SmolLM2-135M shape, fp32, CPU
  python benchmarks/paired_pass.py --dtype bfloat16 --rounds 3
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from throughput import ARCHS, build_model, pile_like_documents  # noqa: E402

from lossgap.data.layout import packed_rows, windows  # noqa: E402
from lossgap.engine.allocator import trim_heap  # noqa: E402
from lossgap.engine.batching import PeakMemory  # noqa: E402
from lossgap.engine.forward import forward_batches, forward_pair  # noqa: E402
from lossgap.engine.head import OutputHead  # noqa: E402
from lossgap.engine.plans import make_plan  # noqa: E402


def cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    kind = "AMX" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else "AVX2 only"
    name = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "?")
    return f"{name} ({kind})"


def batches(model, docs, seq_len: int, batch_size: int, plan_name: str):
    plan = make_plan(plan_name, model, "block", "restart", 1, batch_size)
    rows = packed_rows(docs, seq_len, 1)
    return plan, [b for window in windows(rows, 1 << 16) for b in plan.batches(window)]


@torch.inference_mode()
def single(model, head, plan, work) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    nll = [forward_batches(plan, head, [b])[0]["nll"] for b in work]
    return time.perf_counter() - start, np.concatenate(nll)


@torch.inference_mode()
def paired(plans, heads, work) -> tuple[float, dict]:
    start = time.perf_counter()
    out = [forward_pair(plans[0], heads[0], plans[1], heads[1], b) for b in work]
    return time.perf_counter() - start, {k: np.concatenate([o[k] for o in out]) for k in ("nll_b", "nll_o")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="smollm2-135m", choices=ARCHS)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--plan", default="docs")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    print(f"# {a.arch}, {a.dtype}, T={a.seq_len}, ~{a.tokens} tokens, plan {a.plan}, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}; {cpu_flags()}")
    models = [build_model(a.arch, dtype, "cpu", a.seq_len) for _ in range(2)]
    torch.manual_seed(1)
    for param in models[1].parameters():  # the second model: other weights, same shapes
        param.data.normal_(0, 0.02)
    docs = pile_like_documents(a.tokens, ARCHS[a.arch][5], a.seq_len, 400)
    plans, work = zip(*(batches(m, docs, a.seq_len, a.batch_size, a.plan) for m in models), strict=True)
    work = work[0]
    heads = [OutputHead(m) for m in models]
    n_tokens = sum(b.n_input_tokens for b in work)
    single(models[0], heads[0], plans[0], work[:1])  # warm-up
    paired(plans, heads, work[:1])
    times = {"base": [], "other": [], "paired": []}
    memory, reference = {}, {}
    for _ in range(a.rounds):
        for role, i in (("base", 0), ("other", 1)):
            trim_heap()
            with PeakMemory([torch.device("cpu")]) as peak:
                t, nll = single(models[i], heads[i], plans[i], work)
            times[role].append(t)
            memory[role] = peak.bytes
            reference[role] = nll
        trim_heap()
        with PeakMemory([torch.device("cpu")]) as peak:
            t, pair = paired(plans, heads, work)
        times["paired"].append(t)
        memory["paired"] = peak.bytes
    best = {k: min(v) for k, v in times.items()}
    for role in ("base", "other", "paired"):
        print(f"{role:7s} {n_tokens / best[role]:9,.0f} tok/s (best of {a.rounds}: {best[role]:.2f} s; all "
              f"{', '.join(f'{t:.2f}' for t in times[role])})  working memory {memory[role] / 2**30:.2f} GiB")
    ratio = (best["base"] + best["other"]) / best["paired"]
    print(f"paired throughput / two single passes one after the other: {ratio:.2f}x (target >= 0.9)")
    for role, key in (("base", "nll_b"), ("other", "nll_o")):
        diff = np.abs(pair[key].astype(np.float64) - reference[role]).max()
        print(f"max |paired - single| NLL, {role}: {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
