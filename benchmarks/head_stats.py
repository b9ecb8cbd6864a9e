"""What the streamed distribution statistics (src/lossgap/headstats.py) cost over the NLL-only head, in one process.

Random hidden states and random output matrices shaped like SmolLM2-135M (D=576, V=49152) and Llama-3.1-8B
(D=4096, V=128256; fewer tokens), fp32 and bf16 weights. For each it times, alternating the variants and keeping the
best of --repeats rounds:
  nll     head.token_stats(hidden, targets): the NLL-only fast path
  full    head.token_stats(hidden, targets, METRICS): nll, entropy, p_target, argmax, p_argmax, rank in one pass
  paired  paired_token_stats over two heads: both models' statistics plus KL both ways and top-1 agreement
and prints tokens/s, full / nll (target: <= ~1.15), paired / one nll (target: <= ~2.3), the peak working memory
of each variant (engine.batching.PeakMemory: sampled RSS above the RSS before it) and the RSS after it.

  python benchmarks/head_stats.py
  python benchmarks/head_stats.py --shapes smollm2-135m --dtypes bf16 --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from lossgap.engine.batching import PeakMemory, rss
from lossgap.engine.head import OutputHead
from lossgap.engine.headstats import METRICS, paired_token_stats

SHAPES = {"smollm2-135m": (576, 49152, 2048), "llama-3.1-8b": (4096, 128256, 128)}  # dim, vocab, default tokens
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LOGIT_STD = 3.0  # real models' logits spread over a few nats; exp's cost does not depend on it


class _Bare(torch.nn.Module):
    """A model that is only an output projection: what OutputHead needs."""

    config = type("Config", (), {"model_type": "bench"})()

    def __init__(self, proj: torch.nn.Linear):
        super().__init__()
        self.proj = proj

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.proj


def cpu_description() -> tuple[str, list[str]]:
    """The CPU's model name and the flags that decide the head's speed (bf16 and AMX matmuls, AVX2)."""
    name, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    wanted = sorted(f for f in flags if f in ("avx2", "avx512_bf16") or f.startswith("amx"))
    return name, wanted


def _head(dim: int, vocab: int, dtype: torch.dtype, device: str, seed: int) -> OutputHead:
    gen = torch.Generator(device=device).manual_seed(seed)
    proj = torch.nn.Linear(dim, vocab, bias=False, device=device, dtype=dtype)
    with torch.no_grad():
        proj.weight.copy_(torch.randn(vocab, dim, generator=gen, device=device) * (LOGIT_STD / dim**0.5))
    return OutputHead(_Bare(proj).eval())


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _variants(head_b, head_o, hidden_b, hidden_o, targets) -> dict:
    return {"nll": lambda: head_b.token_stats(hidden_b, targets),
            "full": lambda: head_b.token_stats(hidden_b, targets, METRICS),
            "paired": lambda: paired_token_stats(head_b, hidden_b, head_o, hidden_o, targets)}


@torch.inference_mode()
def measure(shape: str, dtype_name: str, tokens: int, repeats: int, device: str) -> dict:
    """Best-of-repeats seconds, peak working memory and RSS of each variant on one shape and dtype."""
    dim, vocab, _ = SHAPES[shape]
    dtype = DTYPES[dtype_name]
    head_b, head_o = _head(dim, vocab, dtype, device, 1), _head(dim, vocab, dtype, device, 2)
    gen = torch.Generator(device=device).manual_seed(0)
    hidden_b = torch.randn(tokens, dim, generator=gen, device=device).to(dtype)
    hidden_o = torch.randn(tokens, dim, generator=gen, device=device).to(dtype)
    targets = torch.randint(0, vocab, (tokens,), generator=gen, device=device)
    variants = _variants(head_b, head_o, hidden_b, hidden_o, targets)
    devices = [torch.device(device)]
    result, outputs = {}, {}
    for name, run in variants.items():  # warm-up, and memory apart from the timed runs (the sampler takes CPU)
        with PeakMemory(devices) as peak:
            outputs[name] = run()
            _sync(device)
        result[name] = {"seconds": float("inf"), "peak_bytes": peak.bytes, "rss_bytes": rss()}
    nll = outputs["nll"]["nll"]  # the statistics' NLL is the NLL path's figure (bit for bit at equal chunks)
    result["nll_diff"] = max((outputs["full"]["nll"] - nll).abs().max().item(),
                             (outputs["paired"]["nll_b"] - nll).abs().max().item())
    for _ in range(repeats):
        for name, run in variants.items():
            _sync(device)
            start = time.perf_counter()
            run()
            _sync(device)
            result[name]["seconds"] = min(result[name]["seconds"], time.perf_counter() - start)
    return result


def _row(shape: str, dtype: str, tokens: int, r: dict) -> str:
    nll, full, paired = (r[k]["seconds"] for k in ("nll", "full", "paired"))
    mem = " / ".join(f"{r[k]['peak_bytes'] / 2**20:.0f}" for k in ("nll", "full", "paired"))
    return (f"| {shape} | {dtype} | {tokens} | {tokens / nll:,.0f} | {tokens / full:,.0f} | {full / nll:.3f} | "
            f"{tokens / paired:,.0f} | {paired / nll:.3f} | {paired / (2 * nll):.3f} | {mem} | "
            f"{r['paired']['rss_bytes'] / 2**30:.2f} | {r['nll_diff']:.1e} |")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--tokens", type=int, default=None, help="tokens per call (default: per shape)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    name, flags = cpu_description()
    print(f"CPU: {name}; flags: {' '.join(flags) or 'none of avx2 / avx512_bf16 / amx'}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; device {args.device}")
    print("| shape | dtype | tokens | nll tok/s | full tok/s | full/nll | paired tok/s | paired/nll | "
          "paired/(2 nll) | peak MiB nll / full / paired | RSS GiB | max abs ΔNLL |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    results = {}
    for shape in args.shapes:
        for dtype in args.dtypes:
            tokens = args.tokens or SHAPES[shape][2]
            results[(shape, dtype)] = r = measure(shape, dtype, tokens, args.repeats, args.device)
            print(_row(shape, dtype, tokens, r), flush=True)
    return results


if __name__ == "__main__":
    main()
