"""glibc's default allocator against engine/allocator.py's thresholds, on the same scoring work.

mallopt is process-wide and cannot be undone, so each variant runs in a fresh process: the parent alternates them,
--rounds times each (this VM's speed drifts by 10 % and more over minutes). A child builds the model (random
weights, the architecture's shape), scores the same Pile-like documents with the plan and lossgap's output head
(benchmarks/throughput.py's run_plan: the run's forward passes without its files) once untimed, then --passes times,
and reports its best pass, the minor page faults of its passes and its peak resident memory (VmHWM). The per-token
NLL of the two variants must be identical: the allocator changes where memory comes from, not a number.

  python benchmarks/allocator.py                         # SmolLM2-135M shape, bf16, varlen, T=4096, CPU
  python benchmarks/allocator.py --mean-len 1300 --dtype float32
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from throughput import build_model, pile_like_documents, run_plan, workload_arguments

from lossgap.engine.allocator import keep_freed_memory


def child(a) -> dict:
    """One variant in this process: seconds of the best pass, faults per pass, peak memory, a digest of the NLL."""
    kept = keep_freed_memory() if a.variant == "kept" else False
    torch.set_grad_enabled(False)
    model = build_model(a.arch, getattr(torch, a.dtype), "cpu", a.seq_len)
    docs = pile_like_documents(a.tokens, model.config.vocab_size, a.seq_len, a.mean_len)
    run_plan(model, a.plan, "block", docs, a.seq_len, 1, None)  # warm-up: kernels, the heap's growth
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = []
    for _ in range(a.passes):
        tokens, elapsed, nll = run_plan(model, a.plan, "block", docs, a.seq_len, 1, None)
        seconds.append(elapsed)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / a.passes
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    return {"variant": a.variant, "kept": kept, "tokens": tokens, "seconds": min(seconds), "faults_per_pass": faults,
            "peak_rss_mib": hwm, "nll_sha": hashlib.sha256(nll.tobytes()).hexdigest()[:16]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    workload_arguments(p)
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per variant, alternating")
    p.add_argument("--passes", type=int, default=3, help="timed passes over the documents in each process")
    p.add_argument("--variant", choices=("default", "kept"), help=argparse.SUPPRESS)  # a child's
    a = p.parse_args(argv)
    if a.variant:
        print(json.dumps(child(a)))
        return
    forwarded = list(argv if argv is not None else sys.argv[1:])
    results: dict[str, list[dict]] = {"default": [], "kept": []}
    for _ in range(a.rounds):
        for variant in results:
            started = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, *forwarded, "--variant", variant], capture_output=True,
                                 text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[variant].append(r)
            print(f"{variant:8s} best pass {r['seconds']:6.2f} s ({r['tokens'] / r['seconds']:,.0f} tok/s), "
                  f"{r['faults_per_pass']:,.0f} minor faults a pass, peak RSS {r['peak_rss_mib']:,.0f} MiB, "
                  f"process {time.perf_counter() - started:.0f} s", flush=True)
    med = {v: statistics.median(r["seconds"] for r in rs) for v, rs in results.items()}
    digests = {r["nll_sha"] for rs in results.values() for r in rs}
    print(f"# {a.arch} {a.plan} {a.dtype} T={a.seq_len}, {a.tokens:,} tokens (mean document {a.mean_len}); "
          f"glibc thresholds taken: {results['kept'][0]['kept']}")
    print(f"default / kept: {med['default'] / med['kept']:.3f}x (medians of the best passes {med['default']:.2f} "
          f"and {med['kept']:.2f} s); minor faults a pass "
          f"{statistics.median(r['faults_per_pass'] for r in results['default']):,.0f} -> "
          f"{statistics.median(r['faults_per_pass'] for r in results['kept']):,.0f}; peak RSS "
          f"{statistics.median(r['peak_rss_mib'] for r in results['default']):,.0f} -> "
          f"{statistics.median(r['peak_rss_mib'] for r in results['kept']):,.0f} MiB; per-token NLL identical: "
          f"{len(digests) == 1}")


if __name__ == "__main__":
    main()
