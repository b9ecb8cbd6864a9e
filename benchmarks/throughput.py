"""Throughput of lossgap's execution plans against the seed-style path, in one process.

Measures a matmul peak first, then scores the same Pile-like documents (many short, a long tail) with:
  seed-style  HF forward with a float (1,H,T,T) block mask and labels= (what the seed did), in the first dtype
  dense       lossgap's reference plan: explicit 4D (B,1,T,T) mask, tiled fp32 loss
  docs        each document alone, length-bucketed, no mask tensor
  nomask      the causal (leaky) mask as plain causal attention
  flex        FlexAttention with a document BlockMask (CUDA only)
  varlen      packed rows, variable-length attention per document (flash varlen kernel on CUDA)
  PLAN+compile  the plan with lossgap's --compile (each decoder layer torch.compiled; the warm-up pass compiles)
in the dtypes asked for, checks every plan against `dense` (per-token NLL), and prints tokens/s, the ratio to
seed-style, peak memory and model-FLOPs utilisation (2 x parameters FLOPs per token / measured matmul peak).

  python benchmarks/throughput.py                       # SmolLM2-135M shape, T=4096, CPU
  python benchmarks/throughput.py --arch llama-3.1-8b --seq-len 8192 --tokens 131072 --device cuda
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from lossgap.data.encode import TokenizedDocument
from lossgap.data.layout import collate, packed_rows, windows
from lossgap.engine.allocator import trim_heap
from lossgap.engine.batching import PeakMemory, auto_batch_size
from lossgap.engine.compiled import compile_layers
from lossgap.engine.forward import eager, score_batch
from lossgap.engine.head import OutputHead
from lossgap.engine.masks import additive_mask
from lossgap.engine.plans import make_plan

ARCHS = {
    # hidden, intermediate, layers, heads, kv heads, vocab, rope theta, tied
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152, 100000.0, True),
    "llama-3.1-8b": (4096, 14336, 32, 32, 8, 128256, 500000.0, False),
    "tiny": (128, 256, 2, 4, 2, 1024, 10000.0, True),
}


def workload_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a benchmark that scores Pile-like documents with one plan on a model of a given shape."""
    p.add_argument("--arch", default="smollm2-135m", choices=sorted(ARCHS))
    p.add_argument("--plan", default="varlen")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--mean-len", type=int, default=400, help="mean document length (log-normal)")


def build_model(arch: str, dtype: torch.dtype, device: str, seq_len: int, layers: int | None = None
                ) -> torch.nn.Module:
    """The architecture with random weights (no hub here): speed does not depend on the weights' values. Fewer
    layers keep a batch's working memory (activations live one layer at a time) at a fraction of the weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    h, inter, all_layers, heads, kv, vocab, theta, tied = ARCHS[arch]
    layers = layers or all_layers
    cfg = LlamaConfig(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=max(seq_len, 8192),
                      rope_theta=theta, tie_word_embeddings=tied, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model.eval()


def pile_like_documents(n_tokens: int, vocab: int, seq_len: int, mean_len: int, seed: int = 0):
    """Log-normal lengths: many short documents, a long tail, capped at 4 rows."""
    rng = np.random.default_rng(seed)
    docs, total, i = [], 0, 0
    sigma = 1.0
    mu = np.log(mean_len) - sigma**2 / 2
    while total < n_tokens:
        n = int(np.clip(rng.lognormal(mu, sigma), 16, 4 * seq_len))
        docs.append(TokenizedDocument(i, "bench", f"doc{i}", rng.integers(0, vocab, n), 4 * n))
        total += n
        i += 1
    return docs


def matmul_peak(dtype: torch.dtype, device: str, n: int = 2048, reps: int = 5, trials: int = 3) -> float:
    """Best of a few timed n^3 matmuls: on a shared VM one slow trial would understate the peak and inflate MFU."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(trials):
        _sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def _sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def run_seed_style(model, docs, seq_len: int, batch_size: int) -> tuple[int, float]:
    """The seed: HF forward, float (B,H,T,T) block mask, labels=input_ids (its loss, not lossgap's)."""
    heads = model.config.num_attention_heads
    tokens = 0
    rows = list(packed_rows(docs, seq_len, 1))
    start = time.perf_counter()
    for i in range(0, len(rows), batch_size):
        batch = collate(rows[i : i + batch_size], 1, "continuous")
        ids = batch.input_ids.to(model.device)
        mask = additive_mask(batch.segment_ids.to(model.device), "block", model.dtype, heads)
        model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False).loss.item()
        tokens += batch.n_input_tokens
    _sync(model.device.type)
    return tokens, time.perf_counter() - start


@torch.inference_mode()
def run_plan(model, plan_name: str, mask: str, docs, seq_len: int, batch_size: int, batch_tokens: int | None):
    """A plan over the documents; "PLAN+compile" runs it with lossgap's compiled decoder layers (--compile), any
    other name with the layers eager even if an earlier variant compiled them."""
    plan_name, _, extra = plan_name.partition("+")
    if extra == "compile":
        compile_layers(model)
    positions = "restart" if mask == "block" else "continuous"
    plan = make_plan(plan_name, model, mask, positions, 1, batch_size, batch_tokens)
    head = OutputHead(model)
    results, tokens = [], 0
    start = time.perf_counter()
    with nullcontext() if extra == "compile" else eager():
        for rows in windows(packed_rows(docs, seq_len, 1), max(1 << 16, 16 * batch_size * seq_len)):
            for batch in plan.batches(rows):
                nll = score_batch(plan, head, batch)
                results.append((batch.doc_ids, batch.target_pos, nll))
                tokens += batch.n_input_tokens
        _sync(model.device.type)
    elapsed = time.perf_counter() - start
    doc_ids, pos, nll = (np.concatenate(x) for x in zip(*results, strict=True))
    order = np.lexsort((pos, doc_ids))
    return tokens, elapsed, nll[order]


def measure(model, name: str, mask: str, docs, warmup, a, dname: str, n_params: int, peaks: dict, reference: dict,
            seed_tps: float | None) -> dict:
    """One variant: an untimed pass over a few documents (kernel selection, allocator growth), then the timed run."""
    warm_start = time.perf_counter()
    if name == "seed-style":
        run_seed_style(model, warmup, a.seq_len, a.seed_batch_size)
    else:
        run_plan(model, name, mask, warmup, a.seq_len, a.batch_size, a.batch_tokens)
    warmup_s = time.perf_counter() - warm_start
    with PeakMemory([torch.device(a.device)]) as mem:
        if name == "seed-style":
            tokens, elapsed = run_seed_style(model, docs, a.seq_len, a.seed_batch_size)
            nll = None
        else:
            tokens, elapsed, nll = run_plan(model, name, mask, docs, a.seq_len, a.batch_size, a.batch_tokens)
    tps = tokens / elapsed
    if name == "seed-style":
        seed_tps = tps  # the row's own ratio is 1
    agree = None
    if nll is not None:
        key = (dname, mask)
        if name == "dense":
            reference[key] = nll
        agree = float(np.abs(nll.astype(np.float64) - reference[key]).max()) if key in reference else None
    mfu = 2 * n_params * tps / peaks[dname]
    row = {"variant": name, "mask": mask, "dtype": dname, "tokens_per_s": tps,
           "ratio_to_seed": tps / seed_tps if seed_tps else None, "peak_mem_gb": mem.peak / 2**30,
           "working_mem_gb": mem.bytes / 2**30, "max_abs_diff_vs_dense": agree, "mfu": mfu, "warmup_s": warmup_s}
    ratio = f"{row['ratio_to_seed']:.2f}x" if row["ratio_to_seed"] else "n/a"
    diff = "" if agree is None else f"  max|dNLL| vs dense {agree:.2e}"
    print(f"{name:10s} {mask:6s} {dname:8s} {tps:10,.0f} tok/s  {ratio:>7s} seed  "
          f"peak {row['peak_mem_gb']:6.2f} GB (working {row['working_mem_gb']:5.2f})  MFU {mfu:6.1%}{diff}"
          f"  (warm-up {warmup_s:.1f} s)", flush=True)
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="smollm2-135m", choices=sorted(ARCHS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=12288, help="input tokens scored per variant")
    p.add_argument("--mean-doc-len", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--batch-tokens", type=int, help="docs plan token budget (default batch-size x seq-len)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--skip-seed", action="store_true", help="skip the seed-style path")
    p.add_argument("--seed-batch-size", type=int, default=1,
                   help="rows per seed-style batch (its (B,H,T,T) mask and [B,T,V] logits limit it)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--layers", type=int, help="build the architecture with this many layers (working memory "
                                                "estimates on a machine too small for all of them)")
    p.add_argument("--variants", help="comma-separated plan:mask pairs to run, e.g. docs:block,varlen:block "
                                      "(default: all that run on the device)")
    a = p.parse_args(argv)
    offered = [("seed-style", "block")] if not a.skip_seed else []
    offered += [("dense", "block"), ("docs", "block"), ("varlen", "block"), ("dense", "causal"), ("nomask", "causal")]
    if a.device == "cuda":
        offered += [("flex", "block")]
    # compiled layers last: the eager variants above must not pay for (or run) the compile
    offered += [("docs+compile", "block"), ("varlen+compile", "block"), ("nomask+compile", "causal")]
    wanted = [tuple(v.split(":")) for v in a.variants.split(",")] if a.variants else offered
    unknown = [":".join(v) for v in wanted if v not in offered]
    if unknown:
        p.error(f"--variants {','.join(unknown)}: not among {','.join(':'.join(v) for v in offered)}")
    torch.set_grad_enabled(False)
    dtypes = [getattr(torch, d) for d in a.dtypes.split(",")]
    peaks = {str(d).removeprefix("torch."): matmul_peak(d, a.device) for d in {torch.float32, *dtypes}}
    machine = torch.cuda.get_device_name() if a.device == "cuda" else f"{platform.processor() or 'cpu'}, " \
        f"{torch.get_num_threads()} threads"
    print(f"# {a.arch} on {a.device} ({machine}), T={a.seq_len}, ~{a.tokens} tokens/variant, torch {torch.__version__}")
    for d, f in peaks.items():
        print(f"matmul peak {d}: {f / 1e12:.2f} TFLOP/s")
    report = {"arch": a.arch, "device": a.device, "machine": machine, "seq_len": a.seq_len,
              "matmul_peak_flops": peaks, "variants": []}
    reference = {}
    seed_tps = None
    for dtype in dtypes:
        dname = str(dtype).removeprefix("torch.")
        model = build_model(a.arch, dtype, a.device, a.seq_len, a.layers)
        n_params = sum(p.numel() for p in model.parameters())
        docs = pile_like_documents(a.tokens, model.config.vocab_size, a.seq_len, a.mean_doc_len)
        # the seed-style baseline runs in the first dtype listed
        variants = [v for v in offered if v in wanted and (v[0] != "seed-style" or dtype == dtypes[0])]
        sizing = auto_batch_size(make_plan("docs", model, "block", "restart", 1, 1), OutputHead(model), a.seq_len,
                                 model.config.vocab_size)
        report.setdefault("batch_size_auto", {})[dname] = sizing.to_dict()
        print(f"--batch-size auto ({dname}, docs plan, T={a.seq_len}): {sizing.rows} rows; one full row takes "
              f"{sizing.row_bytes / 2**30:.2f} GB of working memory, {sizing.free_bytes / 2**30:.1f} GB free "
              f"(fit {sizing.fit_rows}, cap {sizing.cap_rows})", flush=True)
        warmup = docs[: max(2, len(docs) // 16)]
        for name, mask in variants:
            try:
                row = measure(model, name, mask, docs, warmup, a, dname, n_params, peaks, reference, seed_tps)
            except Exception as e:  # report and go on: one failing variant must not lose the others' figures
                msg = str(e).splitlines()[0][:200] if str(e) else ""
                print(f"{name:10s} {mask:6s} {dname:8s} ERROR {type(e).__name__}: {msg}", flush=True)
                report["variants"].append({"variant": name, "mask": mask, "dtype": dname,
                                           "error": f"{type(e).__name__}: {msg}"})
                if a.device == "cuda":
                    torch.cuda.empty_cache()
                continue
            if name == "seed-style":
                seed_tps = row["tokens_per_s"]
            report["variants"].append(row)
        del model, docs
        gc.collect()
        trim_heap()
    after = {d: matmul_peak(getattr(torch, d), a.device) for d in peaks}
    print("matmul peak again after the variants: " + ", ".join(f"{d} {f / 1e12:.2f} TFLOP/s" for d, f in after.items())
          + " (MFU above used the first measurement)")
    report["matmul_peak_flops_after"] = after
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
