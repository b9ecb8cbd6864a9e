"""`lossgap demo`: the whole analysis offline, in minutes, on a real base/instruct pair and real text.

The pair is trained by this project (`python -m tools.train_demo`) and ships as package data; the held-out
mini-Pile is built at run time from text on this machine (`lossgap corpus build`), so nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from .config import CompareConfig, CorpusConfig, DemoConfig, LayoutConfig, ModelConfig, RunConfig, TokenizeConfig
from .data.corpus import Corpus
from .data.corpus_build import build_corpus
from .errors import ModelError
from .formats.files import atomic_path
from .run.comparison import compare

DEMO_MODELS = Path(__file__).parent / "demo_models"
COMPARE_DIR = "compare"  # the comparison's folder inside the demo's


def demo_models() -> list[tuple[str, str]]:
    pair = [("base", DEMO_MODELS / "base"), ("instruct", DEMO_MODELS / "instruct")]
    for name, folder in pair:
        if not (folder / "config.json").is_file():
            raise ModelError(f"the shipped demo model {name!r} is missing ({folder})",
                             "reinstall lossgap, or train the pair with `python -m tools.train_demo`")
    return [(name, str(folder)) for name, folder in pair]


def select_per_domain(corpus: Path, out: Path, chars_per_domain: int) -> tuple[Path, dict[str, int]]:
    """A deterministic subset with up to chars_per_domain characters of each domain (documents in hash order,
    at least one each), so short domains are not drowned by long source files."""
    docs = list(Corpus(CorpusConfig(str(corpus))))
    chosen, used = [], {}
    for doc in sorted(docs, key=lambda d: hashlib.sha256(d.text.encode()).hexdigest()):
        taken = used.get(doc.domain)
        if taken is None or taken + len(doc.text) <= chars_per_domain:
            chosen.append(doc)
            used[doc.domain] = (taken or 0) + len(doc.text)
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for doc in sorted(chosen, key=lambda d: d.doc_id):
            f.write(json.dumps({"text": doc.text, "meta": {"pile_set_name": doc.domain}}, ensure_ascii=False) + "\n")
    counts = {d: sum(1 for doc in chosen if doc.domain == d) for d in used}
    return out, counts


def run_demo(cfg: DemoConfig) -> dict:
    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda m: None) if cfg.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    say("building the held-out mini-Pile from text on this machine ...")
    built = build_corpus(out / "mini-pile-heldout.jsonl.zst", only_split="heldout")
    chars = cfg.chars_per_domain // (4 if cfg.smollm else 1)  # a 135M model is ~20x slower than the shipped pair
    subset, counts = select_per_domain(built.path, out / "mini-pile-demo.jsonl", chars)
    say(f"  {built.path} -> {subset}: " + ", ".join(f"{d} {n}" for d, n in sorted(counts.items())))
    models = [("smollm2", "smollm2")] if cfg.smollm else demo_models()
    compare_cfg = CompareConfig(
        models=models,
        corpus=CorpusConfig(str(subset)),
        model=ModelConfig("", dtype="auto", device="auto"),
        # the shipped instruct model has a chat template: the report shows what the format does to the gap. It was
        # trained on replies closed by <|im_end|> (tools/train_demo/data.py encode_chat), so its chat-formatted
        # documents end with that token, as its replies do (--chat-end-of-turn); the change over the tokens both runs
        # share, the headline, is the same either way, and no pass is added
        tokenize=TokenizeConfig(chat_context=not cfg.smollm, chat_end_of_turn=not cfg.smollm),
        layout=LayoutConfig(seq_len=cfg.seq_len),
        run=RunConfig(out=str(out / COMPARE_DIR), batch_size=4, overwrite=cfg.overwrite, quiet=cfg.quiet),
        matrix="seed",
        bootstrap=cfg.bootstrap,
        layers=not cfg.smollm,  # the shipped pair is a fine-tune of one model: which of its layers carry the gap
        layers_tokens=0,  # every token: D(1) is the headline D
    )
    results = compare(compare_cfg, min_models=1)
    results["demo_wall_seconds"] = time.perf_counter() - started
    return results
