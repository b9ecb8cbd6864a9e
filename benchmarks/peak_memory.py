"""Peak memory of lossgap's default run against its target: weights × 1.1 + the activations of one batch, with no
float32 copy of the model (issue "Lean"). One process, real SmolLM2-135M-Instruct by default, the CLI's defaults
(plan auto, dtype auto, the float32 check on) on the documents vs_lmeval.py selects:

  weights       the loaded model's parameter bytes (a tied weight once), in the dtype `auto` chose
  run           score() on that loaded model: VmHWM after resetting it (clear_refs 5) just before, minus VmRSS
                then (the weights and the runtime, already resident) -> what the run adds on top of the weights:
                start-up checks (head check, batch sizing, mask probe, float32 check), the prefetched windows, the
                forward passes, the Parquet writers
  one batch     per batch of the run's own plan and batch size (the rows of the corpus, run/sample.py with no
                budget), the same peak around one forward pass and its head computing the run's per-token columns
                (formats/columns.py MODEL_METRICS): the largest is "the activations of one batch"
  verdict       run added ≤ 0.1 × weights + one batch

An untimed short run comes first (vs_lmeval.py's warm-up). Every figure comes from /proc/self/status (VmRSS,
VmHWM) after gc and malloc_trim, so freed heap of an earlier step does not count.

  python benchmarks/peak_memory.py                      # SmolLM2, ~32k tokens of the held-out mini-Pile, T=4096
  python benchmarks/peak_memory.py --tokens 4096 --quick-check
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import torch
from vs_lmeval import WARMUP_CHARS, cpu_facts, lossgap_score, measured, select_documents, write_jsonl

from lossgap.config import ModelConfig
from lossgap.data.corpus import Corpus
from lossgap.engine import forward
from lossgap.engine.dist import init_distributed
from lossgap.engine.model import load_model
from lossgap.engine.prepare import prepare_engine
from lossgap.formats.columns import MODEL_METRICS
from lossgap.run.sample import sample_rows

MIB = 1 << 20


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def one_batch_peaks(cfg, loaded) -> list[dict]:
    """Per batch of the run's plan: the memory one forward pass and its head add (MiB), and the batch's shape."""
    engine = prepare_engine(cfg, init_distributed(cfg.model.device), loaded, None)
    corpus = Corpus(cfg.corpus)
    sample = sample_rows(cfg, engine, corpus, total_targets=1 << 62, budget=None, seed=0)
    out = []
    with engine.plan.attention():
        for batch in sample.batches:
            _, _, mem, how = measured(lambda b=batch: forward.forward_batches(engine.plan, engine.head, [b],
                                                                                     MODEL_METRICS))
            out.append({"rows": int(batch.input_ids.shape[0]), "length": int(batch.input_ids.shape[1]),
                        "input_tokens": int(batch.n_input_tokens), "added_mib": mem["peak"] - mem["rss_before"],
                        "how": how})
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--corpus")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    machine = cpu_facts()
    print(f"# {machine['cpu']}: {machine['cores']} cores; avx512_bf16 {machine['avx512_bf16']}, amx_bf16 "
          f"{machine['amx_bf16']}")
    with tempfile.TemporaryDirectory(prefix="peak_memory-") as tmp_name:
        tmp = Path(tmp_name)
        loaded, _, load_mem, _ = measured(lambda: load_model(ModelConfig(a.model, dtype="auto", device="cpu"),
                                                            quiet=True))
        weights = weight_bytes(loaded.model) / MIB
        docs, origin = select_documents(a.corpus, loaded.tokenizer, a.tokens, a.seq_len, tmp)
        corpus = write_jsonl(docs, tmp / "documents.jsonl")
        # one untimed short run first, as vs_lmeval.py does: what the first call allocates once (kernels' caches,
        # the compiled attention's graph) is not what a run holds per batch
        warm = write_jsonl([{"text": docs[0]["text"][:WARMUP_CHARS], "domain": docs[0]["domain"]}], tmp / "warm.jsonl")
        lossgap_score(a.model, warm, tmp / "warm", a.seq_len, loaded)
        (result, cfg), seconds, run_mem, how = measured(
            lambda: lossgap_score(a.model, corpus, tmp / "run", a.seq_len, loaded))
        summary = json.loads((tmp / "run" / "summary.json").read_text())
        n_tokens = pq.ParquetFile(tmp / "run" / "tokens.parquet").metadata.num_rows
        batches = one_batch_peaks(cfg, loaded)
    added = run_mem["peak"] - run_mem["rss_before"]
    largest = max(b["added_mib"] for b in batches)
    allowed = 0.1 * weights + largest
    report = {"machine": machine, "model": a.model, "dtype": str(next(loaded.model.parameters()).dtype),
              "documents": origin, "scored_tokens": n_tokens, "plan": summary.get("plan"),
              "batch_size": summary.get("batch_size"), "fp32_check": summary.get("fp32_check"),
              "weights_mib": weights, "load": load_mem, "run": run_mem, "run_added_mib": added,
              "run_seconds": seconds, "largest_batch_mib": largest, "batches": len(batches),
              "allowed_mib": allowed, "met": added <= allowed, "how": how}
    print(f"{a.model} in {report['dtype']}: weights {weights:.0f} MiB; RSS after load {load_mem['rss_after']:.0f} "
          f"MiB (runtime and weights)")
    print(f"run: {n_tokens:,} scored tokens in {seconds:.1f} s, plan {report['plan']}, batch size "
          f"{report['batch_size']}; RSS before {run_mem['rss_before']:.0f} MiB, peak {run_mem['peak']:.0f} MiB: "
          f"adds {added:.0f} MiB ({how})")
    print(f"one batch (largest of {len(batches)}): adds {largest:.0f} MiB")
    print(f"target: run adds <= 0.1 x weights + one batch = {0.1 * weights:.0f} + {largest:.0f} = {allowed:.0f} MiB: "
          + ("met" if report["met"] else f"NOT met ({added / allowed:.2f}x)"))
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
