"""Correctness on small models (Llama, Qwen2, Gemma 2) of every execution plan, against the dense reference and the
mask probe, and of --compile and the fused loss kernel, on whatever device is given. Meant for the lent GPU (flex
runs on CUDA only); runs on CPU too.

  python benchmarks/gpu_check.py --device cuda
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from lossgap.config import LayoutConfig
from lossgap.data.encode import TokenizedDocument
from lossgap.data.layout import make_rows, windows
from lossgap.engine.forward import score_batch
from lossgap.engine.head import OutputHead
from lossgap.engine.plans import make_plan
from lossgap.engine.probe import probe_mask


def tiny(arch: str, device: str, dtype: torch.dtype, attn: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.2, tie_word_embeddings=False)
    if arch == "gemma2":
        kw.update(head_dim=32, sliding_window=64, final_logit_softcapping=5.0, query_pre_attn_scalar=32)
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(arch, **kw)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)
    return model.to(device=device, dtype=dtype).eval()


def documents(n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [TokenizedDocument(i, "d", f"d{i}", rng.integers(0, 512, int(rng.integers(20, 300))), 100)
            for i in range(n)]


def score_all(model, plan_name: str, layout: LayoutConfig, batch_size: int) -> np.ndarray:
    plan = make_plan(plan_name, model, layout.mask, layout.position_mode, layout.label_offset, batch_size)
    head = OutputHead(model)
    out = []
    for rows in windows(make_rows(documents(), layout), 1 << 16):
        for batch in plan.batches(rows):
            out.append((batch.doc_ids, batch.target_pos, score_batch(plan, head, batch)))
    d, p, nll = (np.concatenate(x) for x in zip(*out, strict=True))
    return nll[np.lexsort((p, d))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    failures = 0
    for arch in ("llama", "qwen2", "gemma2"):
        attn = "eager" if arch == "gemma2" else "sdpa"
        block_plans = ["docs", "flex"] + ["varlen"] * (arch != "gemma2")  # varlen refuses soft-capping
        truth = {}  # mask -> dense fp32 NLL: what every plan in every dtype is measured against
        for dtype in (torch.float32, torch.bfloat16):
            model = tiny(arch, a.device, dtype, attn)
            head = OutputHead(model)
            for mask, fast in (("block", block_plans), ("causal", ["nomask", "flex"])):
                layout = LayoutConfig("packed", 256, None, mask, None, 1)
                ref = score_all(model, "dense", layout, 4).astype(np.float64)
                truth.setdefault(mask, ref)
                ref_dev = np.abs(ref - truth[mask])
                for name in fast:
                    if name == "flex" and a.device != "cuda":
                        continue
                    try:
                        got = score_all(model, name, layout, 4).astype(np.float64)
                        probe = probe_mask(make_plan(name, model, mask, layout.position_mode, 1, 1), head,
                                           model.config.vocab_size)
                        diff = float(np.abs(got - ref).max())
                        dev = np.abs(got - truth[mask])
                        if dtype == torch.float32:
                            ok = diff <= 1e-4
                        else:  # bf16 moves single tokens a lot: a plan must be no farther from fp32 than dense is
                            ok = dev.mean() <= 1.25 * ref_dev.mean() + 1e-3 and dev.max() <= 2 * ref_dev.max() + 1e-2
                        ok = ok and probe.passed
                        status = "ok" if ok else "FAIL"
                        detail = (f"max|dNLL| {diff:.2e}; vs fp32 dense mean {dev.mean():.2e} max {dev.max():.2e} "
                                  f"(dense {ref_dev.mean():.2e} / {ref_dev.max():.2e}); "
                                  f"probe shift {probe.max_logit_shift:.2e}")
                    except Exception as e:  # report and go on: one broken plan must not hide the others
                        ok, status, detail = False, "ERROR", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                    failures += not ok
                    print(f"{status:5s} {arch:7s} {str(dtype)[6:]:9s} {mask:6s} {name:7s} vs dense: {detail}",
                          flush=True)
    failures += check_compile(a.device)
    failures += check_loss_kernels(a.device)
    print(f"{failures} failures")
    return 1 if failures else 0


def check_compile(device: str) -> int:
    """--compile on small models: lossgap's own start check (compiled layers against eager, and against float32
    below it), for the docs and varlen plans."""
    from lossgap.engine.compiled import check_compiled, compile_layers

    failures = 0
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny("llama", device, dtype, "sdpa")
        compile_layers(model)
        for name in ("docs", "varlen"):
            try:
                plan = make_plan(name, model, "block", "restart", 1, 4)
                check = check_compiled(plan, OutputHead(model), model.config.vocab_size, "tiny llama")
                ok, detail = True, (f"max|dNLL| vs {check['reference']} {check['max_abs_diff']:.2e} "
                                    f"(eager {check['eager_max_abs_diff']:.2e})")
            except Exception as e:  # a refused or failing compile: report and go on
                ok, detail = False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            failures += not ok
            print(f"{'ok' if ok else 'FAIL':5s} llama   {str(dtype)[6:]:9s} block  {name:7s} --compile: {detail}",
                  flush=True)
    return failures


def check_loss_kernels(device: str) -> int:
    """The fused Cut Cross-Entropy kernel (when installed) against float64 on small models, then the head alone at
    Llama-3 size (hidden 4096, V=128,256, 16k tokens, bf16): tiled vs cce, time and agreement."""
    try:
        import cut_cross_entropy  # noqa: F401
    except ImportError:
        print("skip  cce: cut-cross-entropy is not installed")
        return 0
    failures = 0
    for arch in ("llama", "gemma2"):
        for dtype in (torch.float32, torch.bfloat16):
            model = tiny(arch, device, dtype, "eager" if arch == "gemma2" else "sdpa")
            check = OutputHead(model, kernel="cce").check_kernel(model.config.vocab_size)
            failures += not check["passed"]
            print(f"{'ok' if check['passed'] else 'FAIL':5s} {arch:7s} {str(dtype)[6:]:9s} loss kernel cce: "
                  f"max|d| vs float64 {check['max_abs_diff_vs_float64']:.2e} "
                  f"(tiled {check['tiled_max_abs_diff_vs_float64']:.2e})", flush=True)
    if device == "cuda":
        time_heads(device, 4096, 128256, 16384)
    return failures


def time_heads(device: str, dim: int, vocab: int, tokens: int) -> None:
    """The head alone, tiled vs cce, in bf16: milliseconds per batch, peak memory and agreement."""
    import time

    proj = torch.nn.Linear(dim, vocab, bias=False, device=device, dtype=torch.bfloat16)
    torch.nn.init.normal_(proj.weight, std=0.02)
    model = torch.nn.Module()
    model.config = type("Config", (), {"model_type": "llama"})()
    model.get_output_embeddings = lambda: proj
    hidden = torch.randn(tokens, dim, device=device, dtype=torch.bfloat16)
    targets = torch.randint(0, vocab, (tokens,), device=device)
    cuda = device == "cuda"
    out = {}
    for kernel in ("tiled", "cce"):
        head = OutputHead(model, kernel=kernel)
        with torch.inference_mode():
            head.nll(hidden, targets)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            for _ in range(3):
                out[kernel] = head.nll(hidden, targets)
            if cuda:
                torch.cuda.synchronize()
        ms = (time.perf_counter() - start) / 3 * 1e3
        peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GB" if cuda else ""
        print(f"head alone ({tokens} tokens, hidden {dim}, V={vocab}), {kernel:5s}: {ms:7.1f} ms{peak}", flush=True)
    print(f"head alone, cce vs tiled: max|d| {(out['cce'] - out['tiled']).abs().max().item():.2e}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
