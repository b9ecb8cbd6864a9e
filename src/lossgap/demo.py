"""`lossgap demo`: the whole analysis offline, in minutes, on a real base/instruct pair and real text.

The pair is trained by this project (`python -m lossgap.train_demo`) and ships as package data; the held-out
mini-Pile is built at run time from text on this machine (`lossgap corpus build`), so nothing is downloaded.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .compare import CompareConfig, compare
from .config import CorpusConfig, LayoutConfig, ModelConfig, RunConfig
from .corpus_build import build_corpus
from .errors import ModelError

DEMO_MODELS = Path(__file__).parent / "demo_models"


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    smollm: bool = False  # score with SmolLM2-135M-Instruct (real pretrained weights) instead of the shipped pair
    max_docs: int = 48  # held-out documents, a deterministic sample
    seq_len: int = 1024
    bootstrap: int = 1000
    overwrite: bool = True  # the demo's folder holds only the demo: re-running replaces it
    quiet: bool = False


def demo_models() -> list[tuple[str, str]]:
    pair = [("base", DEMO_MODELS / "base"), ("instruct", DEMO_MODELS / "instruct")]
    for name, folder in pair:
        if not (folder / "config.json").is_file():
            raise ModelError(f"the shipped demo model {name!r} is missing ({folder})",
                             "reinstall lossgap, or train the pair with `python -m lossgap.train_demo`")
    return [(name, str(folder)) for name, folder in pair]


def demo(cfg: DemoConfig) -> dict:
    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda m: None) if cfg.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    say("building the held-out mini-Pile from text on this machine ...")
    built = build_corpus(out / "mini-pile-heldout.jsonl.zst", only_split="heldout")
    say(f"  {built.path}: " + ", ".join(f"{d} {sum(c.values())}" for d, c in sorted(built.counts.items())))
    models = [("smollm2", "smollm2")] if cfg.smollm else demo_models()
    compare_cfg = CompareConfig(
        models=models,
        corpus=CorpusConfig(str(built.path), sample=cfg.max_docs, seed=0),
        model=ModelConfig("", dtype="auto", device="auto"),
        layout=LayoutConfig(seq_len=cfg.seq_len),
        run=RunConfig(out=str(out / "compare"), batch_size=4, overwrite=cfg.overwrite, quiet=cfg.quiet),
        matrix="seed",
        bootstrap=cfg.bootstrap,
    )
    results = compare(compare_cfg, min_models=1)
    results["demo_wall_seconds"] = time.perf_counter() - started
    return results
