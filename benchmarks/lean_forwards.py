"""The decoder on engine/lean.py's in-place norms and MLPs against the model's own forwards, in one process.

Alternates the two over the same batches (a plan's hidden states: the decoder without the output head), several
rounds, and prints each one's median and best time, the ratio, and whether the hidden states are identical (they
must be, bit for bit). This VM's speed drifts by 10 % and more over minutes; alternating in one process is what
makes a few-percent difference visible.

  python benchmarks/lean_forwards.py                          # SmolLM2-135M shape, bf16, T=4096, CPU
  python benchmarks/lean_forwards.py --mean-len 1300 --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from throughput import build_model, pile_like_documents, workload_arguments

from lossgap.data.layout import packed_rows
from lossgap.engine.lean import lean_targets
from lossgap.engine.plans import make_plan


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    workload_arguments(p)
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    model = build_model(a.arch, getattr(torch, a.dtype), "cpu", a.seq_len)
    docs = pile_like_documents(a.tokens, model.config.vocab_size, a.seq_len, a.mean_len)
    plan = make_plan(a.plan, model, "block", "restart", 1, 1)
    batches = list(plan.batches(list(packed_rows(docs, a.seq_len, 1))))
    tokens = sum(b.input_ids.numel() for b in batches)
    print(f"# {a.arch} {a.plan} {a.dtype} T={a.seq_len}: {len(docs)} documents (mean {a.mean_len} tokens), "
          f"{len(batches)} batches, {tokens:,} tokens; {len(lean_targets(model))} modules take a lean forward; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    def run(lean: bool) -> tuple[float, list[torch.Tensor]]:
        plan.lean = lean
        start = time.perf_counter()
        out = [plan.hidden_states(b) for b in batches]
        return time.perf_counter() - start, out

    run(True), run(False)  # warm-up: kernel selection, the allocator's growth, the lean probes
    times: dict[bool, list[float]] = {True: [], False: []}
    identical = True
    for _ in range(a.rounds):
        own_seconds, own = run(False)
        lean_seconds, lean_out = run(True)
        times[False].append(own_seconds)
        times[True].append(lean_seconds)
        identical &= all(torch.equal(x, y) for x, y in zip(own, lean_out, strict=True))
    for lean, label in ((False, "model's own forwards"), (True, "lean forwards")):
        xs = times[lean]
        print(f"{label:22s} median {statistics.median(xs):7.3f} s  best {min(xs):7.3f} s  "
              f"({tokens / statistics.median(xs):,.0f} tok/s)  rounds: " + " ".join(f"{x:.2f}" for x in xs))
    print(f"own / lean: {statistics.median(times[False]) / statistics.median(times[True]):.3f}x median, "
          f"{min(times[False]) / min(times[True]):.3f}x best; hidden states identical: {identical}")


if __name__ == "__main__":
    main()
