"""Train the demo pair shipped in `lossgap/demo_models`: a small Llama base model and its instruct sibling.

Everything comes from a corpus built on this machine (`lossgap.data.corpus_build.build_corpus`): the base model is
pretrained on the corpus's training split, the instruct model is fine-tuned from the saved base on chat
conversations made from the same training split, and both are evaluated on the held-out split after saving, by
loading the saved weights. Both folders share one tokenizer (the chat tokens are reserved from the start), so the
two models can be compared token by token. Run from the repository root as

    python -m tools.train_demo --out src/lossgap/demo_models [--minutes 12] [--quick]

Deterministic: fixed seeds, `torch.use_deterministic_algorithms`, an explicit thread count, documents and
conversations in a fixed (seeded) order. Step counts are fixed numbers; `--minutes` only chooses the base step
count from a timed benchmark when `--base-steps` is not given (the chosen count is logged, so the run can be
repeated exactly with `--base-steps`).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from lossgap.data.corpus_build import BuildResult, build_corpus

from .data import CHAT_TEMPLATE, EOT, SPECIAL_TOKENS, Record, base_rows, read_records, train_tokenizer
from .evaluate import evaluate_pair, unigram_counts
from .train import QUICK, TrainConfig, load_model, parameter_count, train_base, train_instruct

CREATED_BY = "python -m tools.train_demo"


def train_pair(out_dir: Path, minutes: float = 12.0, quick: bool = False, seed: int = 0,
               cfg: TrainConfig | None = None, corpus_dir: Path | None = None, reuse_base: bool = False) -> dict:
    """Build the corpus, train tokenizer, base and instruct models, save them under out_dir/{base,instruct} with a
    training_log.json each (held-out numbers computed from the saved weights). Returns both logs.

    reuse_base: keep the base model already saved in out_dir/base (checked to come from the same corpus, tokenizer
    and base settings) and train only the instruct model."""
    cfg = cfg or (QUICK if quick else TrainConfig())
    out_dir = Path(out_dir)
    threads_before, det_before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return _train_pair(out_dir, minutes, quick, seed, cfg, Path(corpus_dir or tmp), reuse_base)
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(det_before)


def _train_pair(out_dir: Path, minutes: float, quick: bool, seed: int, cfg: TrainConfig, corpus_dir: Path,
                reuse_base: bool) -> dict:
    """The steps of train_pair, in order: corpus, tokenizer, base, instruct, evaluation, logs."""
    t_start = time.perf_counter()
    random.seed(seed)
    np.random.seed(seed)
    built, corpus_info = _build_corpus(cfg, corpus_dir)
    train, heldout = read_records(built.path, "train"), read_records(built.path, "heldout")
    print(f"corpus {built.sha256[:12]}: {len(train)} train / {len(heldout)} held-out documents", file=sys.stderr)

    # tokenizer: trained once on the training split, shared by both models (the instruct copy adds a template)
    tokenizer = train_tokenizer([r.text for r in train], cfg.vocab_size, cfg.max_positions)
    chat_tokenizer = copy.deepcopy(tokenizer)
    chat_tokenizer.chat_template = CHAT_TEMPLATE
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    token_docs = tokenizer([r.text for r in train], add_special_tokens=False)["input_ids"]
    counts = unigram_counts(tokenizer, [r.text for r in train])
    heldout = _at_most_tokens(heldout, tokenizer, cfg.eval_max_doc_tokens)
    rows = base_rows(token_docs, cfg.seq_len, tokenizer.eos_token_id)

    folders = {"base": out_dir / "base", "instruct": out_dir / "instruct"}
    reused = _reused_base_log(folders["base"], tokenizer, built.sha256, cfg, seed) if reuse_base else None
    if reused is not None:
        cfg = replace(cfg, base_steps=reused["training"]["steps"])
    common = _common_log(cfg, quick, seed, corpus_info, _tokenizer_info(tokenizer, token_docs), counts)
    if reused is not None:
        base_log = reused
    else:
        base_log = {**common, "model": "base", **train_base(cfg, seed, minutes, rows, tokenizer, folders["base"])}

    # instruct: fine-tuned from the saved (bfloat16) base weights, loss on assistant tokens only
    model, _ = load_model(folders["base"])
    base_log["parameters"] = parameter_count(model)
    inst_log = {
        **common, "model": "instruct", "parameters": base_log["parameters"],
        "fine_tuned_from": "../base (its saved bfloat16 weights, loaded as float32)"
                           + (" - reused from an earlier run of this script (--reuse-base)" if reuse_base else ""),
        "training": train_instruct(model, cfg, seed, train, rows, chat_tokenizer, folders["instruct"]),
        "chat_template": CHAT_TEMPLATE,
    }
    del model  # free it before the evaluation loads both saved models

    evals, chat, comparison = evaluate_pair(folders, heldout, counts, built.sha256, cfg, seed)
    total = round(time.perf_counter() - t_start, 1)
    logs = {"base": base_log, "instruct": inst_log}
    for name, log in logs.items():
        log.update({"heldout_eval": evals[name], "chat_eval": chat, "comparison": comparison,
                    "total_wall_time_s": total, "files": _files(folders[name])})
        (folders[name] / "training_log.json").write_text(json.dumps(log, indent=1, ensure_ascii=False) + "\n")
    return logs


def _build_corpus(cfg: TrainConfig, corpus_dir: Path) -> tuple[BuildResult, dict]:
    """The corpus, built on this machine, and the log's record of how (the sources' hashes tell what it read)."""
    build_args = {"seed": cfg.corpus_seed, "math_docs": cfg.math_docs, "max_docs_per_source": cfg.max_docs_per_source}
    built = build_corpus(corpus_dir / "demo_corpus.jsonl.zst", **build_args)
    sidecar = json.loads(built.sidecar.read_text())
    return built, {
        "file": built.path.name, "sha256": built.sha256, "python": sidecar["python"], "build_args": build_args,
        "counts": built.counts, "notes": built.notes,
        "source_sha256": {s["name"]: s["sha256"] for s in sidecar["sources"]},
    }


def _at_most_tokens(records: list[Record], tokenizer, max_tokens: int | None) -> list[Record]:
    """The records of at most max_tokens tokens (all of them when None): quick runs skip long held-out documents."""
    if max_tokens is None:
        return records
    token_docs = tokenizer([r.text for r in records], add_special_tokens=False)["input_ids"]
    return [r for r, ids in zip(records, token_docs, strict=True) if len(ids) <= max_tokens]


def _tokenizer_info(tokenizer, token_docs: list[list[int]]) -> dict:
    return {"kind": "byte-level BPE (HF tokenizers), digits split one by one", "vocab_size": len(tokenizer),
            "special_tokens": {t: i for i, t in enumerate(SPECIAL_TOKENS)}, "bos = eos = pad": EOT,
            "trained_on": "training split, corpus order", "training_tokens": int(sum(map(len, token_docs)))}


def _common_log(cfg: TrainConfig, quick: bool, seed: int, corpus_info: dict, tok_info: dict,
                counts: np.ndarray) -> dict:
    """The part of the log both models share: how to repeat the run and what it was trained on."""
    return {
        "created_by": CREATED_BY, "quick": quick, "seed": seed,
        "seeds": {"torch.manual_seed (init)": seed, "row order": f"torch.Generator().manual_seed(s*1000+epoch), s = "
                  f"{seed} (base rows), {seed + 1} (chat rows), {seed + 2} (replay rows)",
                  "chat data": f"random.Random({seed})", "corpus (math generator)": cfg.corpus_seed},
        "environment": _environment(cfg.threads), "corpus": corpus_info, "tokenizer": tok_info,
        "hyperparameters": _jsonable(asdict(cfg)), "deterministic": "torch.use_deterministic_algorithms(True)",
        "unigram": {"estimated_on": "training split", "smoothing": "add-one over the vocabulary",
                    "n_tokens": int(counts.sum()), "counts": counts.tolist()},
    }


def _environment(threads: int) -> dict:
    import tokenizers
    import transformers

    names = [line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if line.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(), "cpu": cpu,
        "torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "numpy": np.__version__, "threads": threads,
    }


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


_BASE_KEYS = ("corpus_seed", "math_docs", "max_docs_per_source", "vocab_size", "hidden_size", "num_layers",
              "num_heads", "num_kv_heads", "intermediate_size", "max_positions", "rope_theta", "seq_len", "batch_size",
              "base_lr", "base_warmup", "min_lr_ratio", "weight_decay", "betas", "grad_clip")


def _reused_base_log(base_dir: Path, tokenizer, corpus_sha: str, cfg: TrainConfig, seed: int) -> dict:
    """The log of a base model saved by an earlier run, after checking that this run would train the same one."""
    log = json.loads((base_dir / "training_log.json").read_text())
    saved = json.loads((base_dir / "tokenizer.json").read_text())
    problems = []
    if log["corpus"]["sha256"] != corpus_sha:
        problems.append("the corpus differs")
    if saved["model"] != json.loads(tokenizer.backend_tokenizer.to_str())["model"]:
        problems.append("the retrained tokenizer differs")
    wanted = _jsonable(asdict(cfg))
    changed = [k for k in _BASE_KEYS if log["hyperparameters"].get(k) != wanted[k]]
    if cfg.base_steps not in (None, log["training"]["steps"]):
        changed.append("base_steps")
    if changed or log["seed"] != seed:
        problems.append(f"base settings differ: {', '.join(changed) or 'seed'}")
    if problems:
        raise RuntimeError(f"--reuse-base: {base_dir} was not trained by this configuration ({'; '.join(problems)})")
    for key in ("heldout_eval", "chat_eval", "comparison", "total_wall_time_s", "files"):
        log.pop(key, None)
    log["hyperparameters"] = {k: v for k, v in log["hyperparameters"].items() if k in _BASE_KEYS or "base" in k}
    log["reused"] = "weights and training record from an earlier run; evaluated again by the run that trained instruct"
    return log


def _files(folder: Path) -> dict:
    return {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != "training_log.json"}


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=CREATED_BY, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder that receives base/ and instruct/")
    p.add_argument("--minutes", type=float, default=12.0, help="CPU budget for base pretraining (sets its steps)")
    p.add_argument("--quick", action="store_true", help="tiny configuration that runs in seconds (tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-steps", type=int, help="fixed base step count (overrides --minutes)")
    p.add_argument("--instruct-steps", type=int)
    p.add_argument("--instruct-lr", type=float)
    p.add_argument("--instruct-replay-fraction", type=float, help="share of instruct rows that replay pretraining data")
    p.add_argument("--threads", type=int)
    p.add_argument("--reuse-base", action="store_true",
                   help="keep the base already in OUT/base (same corpus and settings) and train only the instruct")
    p.add_argument("--corpus-dir", type=Path, help="keep the built corpus here (default: a temporary folder)")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else TrainConfig()
    overrides = {"base_steps": args.base_steps, "instruct_steps": args.instruct_steps,
                 "instruct_lr": args.instruct_lr, "instruct_replay_fraction": args.instruct_replay_fraction,
                 "threads": args.threads}
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # per-call progress bars and "sequence longer than" notices
    hf_logging.disable_progress_bar()
    logs = train_pair(args.out, args.minutes, args.quick, args.seed, cfg, args.corpus_dir, args.reuse_base)
    print(json.dumps(logs["base"]["comparison"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
