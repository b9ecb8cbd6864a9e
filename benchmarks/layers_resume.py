"""--layers with and without resuming passes part-way down the decoder (run/layers.py KeptStates, engine/prefix.py),
in one process on the same resident pair and sample.

It runs `lossgap compare --matrix single --layers` on the demo's corpus and shipped pair (bf16 where `--dtype auto`
takes it). At the layer step the attribution runs `--rounds` times per variant, alternating, so a slow spell of a
shared VM hits both; then the comparison goes on as usual. Prints each round's seconds, the best of each and their
ratio, the decoder layers run, the memory the kept states take, and whether the stored sums are identical.

  python benchmarks/layers_resume.py                  # the demo pair, every token, 3 rounds
  python benchmarks/layers_resume.py --rounds 5 --chars-per-domain 60000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from paired_pass import cpu_flags  # noqa: E402

import lossgap.run.comparison as comparison  # noqa: E402
import lossgap.run.layers as layers  # noqa: E402
from lossgap.cli import main as lossgap_main  # noqa: E402
from lossgap.config import DemoConfig  # noqa: E402
from lossgap.data.corpus_build import build_corpus  # noqa: E402
from lossgap.demo import demo_models, select_per_domain  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--chars-per-domain", type=int, default=DemoConfig.chars_per_domain)
    a = p.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="layers_resume_"))
    built = build_corpus(out / "heldout.jsonl.zst", only_split="heldout")
    corpus, _ = select_per_domain(built.path, out / "corpus.jsonl", a.chars_per_domain)
    timings: dict[str, list[float]] = {"full passes": [], "resumed": []}
    records: dict[str, dict] = {}
    real = layers.layer_attribution
    cap = layers.KEPT_BYTES

    def alternating(cfg, names, paired, folder, settings, quiet=False):
        for _ in range(a.rounds):
            for variant, kept_bytes in (("full passes", 0), ("resumed", cap)):
                layers.KEPT_BYTES = kept_bytes
                start = time.perf_counter()
                record = real(cfg, names, paired, folder, settings, quiet=True)
                timings[variant].append(time.perf_counter() - start)
                records[variant] = {**record, "sums": pq.read_table(folder.layer_sums(names[1]))}
                print(f"{variant:12s} {timings[variant][-1]:6.2f} s", flush=True)
        layers.KEPT_BYTES = cap
        return record

    comparison.layer_attribution = alternating
    (_, base), (other_name, other) = demo_models()
    code = lossgap_main(["compare", "--base", str(base), "--model", f"{other_name}={other}",
                         "--corpus", str(corpus), "--out", str(out / "cmp"), "--matrix", "single", "--layers",
                         "--layers-tokens", "0", "--batch-size", "4", "--seq-len", str(DemoConfig.seq_len), "--quiet"])
    if code:
        raise SystemExit(code)
    full, resumed = records["full passes"], records["resumed"]
    best = {k: min(v) for k, v in timings.items()}
    cost = resumed["cost"]
    print(f"# {cpu_flags()}, dtype {resumed['dtype']}: {cost['forward_passes']} passes over "
          f"{cost['tokens_per_pass']} scored tokens, {resumed['n_layers']} decoder layers")
    print(f"best: full passes {best['full passes']:.2f} s, resumed {best['resumed']:.2f} s, "
          f"ratio {best['full passes'] / best['resumed']:.2f}x")
    print(f"decoder layers run {cost['decoder_layers_run']} of {cost['decoder_layers_without_resuming']} "
          f"(resuming at {cost['resume_boundaries']}); kept states {cost['kept_state_bytes'] / 2**20:.0f} MiB")
    print(f"stored sums identical: {full['sums'].equals(resumed['sums'])}; check "
          f"{json.dumps(resumed['check'])}")


if __name__ == "__main__":
    main()
