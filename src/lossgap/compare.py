"""`lossgap.compare`: score several models on exactly the same documents and tokens, then analyse and report."""

from __future__ import annotations

import copy
import gc
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .config import (
    MATRICES,
    CorpusConfig,
    LayoutConfig,
    ModelConfig,
    RunConfig,
    ScoreConfig,
    TokenizeConfig,
)
from .corpus import Corpus
from .dist import init_distributed
from .encode import resolve_special_tokens
from .errors import UsageError
from .matrix import SEED_MATRIX, Configuration, single_configuration
from .model import load_model, load_tokenizer, resolve_device, resolve_seq_len
from .plans import choose_plan
from .score import library_versions, prepare_out_dir, score_offsets
from .store import write_json

MANIFEST = "compare.json"
COMPARE_FILES = (MANIFEST, "results.json", "report.md", "report.html")


@dataclass
class CompareConfig:
    """Models to compare (the first is the baseline) and the options shared by every scoring run."""

    models: list[tuple[str, str]]
    corpus: CorpusConfig
    model: ModelConfig = field(default_factory=lambda: ModelConfig(""))  # dtype/device/attn for every model
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)  # layout/mask/offset apply to matrix "single"
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/compare"))
    matrix: str = "seed"
    bootstrap: int = 1000
    seed: int = 0

    def validate(self, min_models: int = 2) -> CompareConfig:
        if len(self.models) < min_models:
            raise UsageError("compare needs at least two models",
                             "pass --base A --instruct B, or --model NAME=PATH twice")
        names = [n for n, _ in self.models]
        if len(set(names)) != len(names):
            raise UsageError(f"model names must differ: {names}")
        for name in names:
            if not name or "/" in name or name.startswith("."):
                raise UsageError(f"--model {name!r}: a model name must be a plain word (NAME=PATH)")
        if self.matrix not in MATRICES:
            raise UsageError(f"--matrix: {self.matrix!r} is not one of {', '.join(MATRICES)}")
        if self.bootstrap < 100:
            raise UsageError("--bootstrap must be at least 100 resamples")
        self.corpus.validate()
        self.layout.validate()
        self.run.validate()
        replace(self.model, name="x").validate()
        return self

    def configurations(self) -> tuple[Configuration, ...]:
        if self.matrix == "seed":
            return SEED_MATRIX
        return (single_configuration(self.layout.label_offset, self.layout.layout, self.layout.mask),)


def run_dir(out: Path, config_key: str, model_name: str) -> Path:
    return out / "runs" / config_key / model_name


def compare(cfg: CompareConfig, min_models: int = 2) -> dict:
    """Score every model under every configuration, then write results.json and the report; return the results.

    min_models=1 analyses one model alone (label offsets, masks, leakage), as `lossgap demo --smollm` does."""
    from .report import write_report
    from .results import build_results
    from .tokcheck import compare_tokenizers

    started = time.perf_counter()
    cfg.validate(min_models)
    out = Path(cfg.run.out)
    _prepare(out, cfg.run.overwrite)
    Corpus(cfg.corpus)  # fail early on a missing or unreadable corpus, before any model is loaded
    model_cfgs = {name: replace(cfg.model, name=spec) for name, spec in cfg.models}
    tokenizers = {name: load_tokenizer(m) for name, m in model_cfgs.items()}
    base_name = cfg.models[0][0]
    checks = {}
    for name in list(tokenizers)[1:]:
        selected = (d.text for d in Corpus(cfg.corpus))
        checks[name] = compare_tokenizers(tokenizers[base_name], tokenizers[name], selected, base_name, name)
    mode = "tokens" if all(c["compatible"] for c in checks.values()) else "bits_per_byte"
    configs = cfg.configurations()
    _say(cfg, f"comparing {', '.join(model_cfgs)} on {cfg.corpus.path}: {len(configs)} configurations, "
              f"{'token-level' if mode == 'tokens' else 'bits per byte only (tokenizers differ)'}")
    plans = _plans_per_group(cfg, configs)

    tokenize = cfg.tokenize
    seq_len = cfg.layout.seq_len
    runs: dict[str, dict[str, str]] = {c.key: {} for c in configs}
    model_info = {}
    step = 0
    for name, mcfg in model_cfgs.items():
        loaded = load_model(mcfg, quiet=cfg.run.quiet)
        seq_len = resolve_seq_len(loaded, seq_len)
        if mode == "tokens" and name == base_name:
            special = resolve_special_tokens(tokenizers[base_name], cfg.tokenize, loaded.vocab_size)
            # every model gets the baseline's BOS/EOS ids: an instruct EOS such as <|eot_id|> is another target
            tokenize = TokenizeConfig(special.bos_id is not None, special.eos_id is not None,
                                      special.bos_id, special.eos_id)
        model_info[name] = {"spec": mcfg.name, **loaded.describe()}
        # the offsets of one layout and mask share their forward passes: one pass per batch serves all of them
        for group in _offset_groups(configs):
            step += len(group)
            keys = " + ".join(f"{conf.key} ({conf.computes})" for conf in group)
            _say(cfg, f"[{step}/{len(configs) * len(model_cfgs)}] {name}: {keys}")
            run_cfgs = []
            for conf in group:
                layout = replace(cfg.layout, layout=conf.layout, mask=conf.mask, label_offset=conf.label_offset,
                                 seq_len=seq_len, stride=cfg.layout.stride if conf.layout == "single" else None)
                run_cfgs.append(ScoreConfig(
                    model=mcfg, corpus=copy.deepcopy(cfg.corpus), tokenize=tokenize, layout=layout,
                    run=replace(cfg.run, out=str(run_dir(out, conf.key, name)), overwrite=True,
                                plan=plans[(conf.layout, conf.mask)]),
                ))
                runs[conf.key][name] = str(run_dir(out, conf.key, name).relative_to(out))
            score_offsets(run_cfgs, loaded, tokenizers[base_name] if mode == "tokens" else None)
        del loaded
        gc.collect()

    if not init_distributed(cfg.model.device).main:
        return {}  # under torchrun, rank 0 analyses and reports
    manifest = {
        "schema_version": 1,
        "baseline": base_name,
        "models": model_info,
        "mode": mode,
        "tokenizers": checks,
        "configurations": [c.to_dict() for c in configs],
        "runs": runs,
        "bootstrap": cfg.bootstrap,
        "seed": cfg.seed,
        "corpus": asdict(cfg.corpus),
        "config": _jsonable(cfg),
        "versions": library_versions(),
        "elapsed_seconds": time.perf_counter() - started,
    }
    write_json(out / MANIFEST, manifest)
    results = build_results(out)
    write_report(out, results)
    return results


def _offset_groups(configs) -> list[list[Configuration]]:
    """Configurations that differ only in label offset, together, in the order they first appear."""
    groups: dict[tuple[str, str], list[Configuration]] = {}
    for conf in configs:
        groups.setdefault((conf.layout, conf.mask), []).append(conf)
    return list(groups.values())


def _plans_per_group(cfg: CompareConfig, configs) -> dict[tuple[str, str], str]:
    """--plan where it applies to a configuration, auto elsewhere: the matrix mixes masks and layouts, and a plan
    made for some of them (docs, varlen: documents apart; nomask: the causal mask) must not stop the others. A plan
    that applies to none is refused with its reason."""
    device = resolve_device(cfg.model.device)
    plans, refusals = {}, []
    for group in _offset_groups(configs):
        conf = group[0]
        layout = replace(cfg.layout, layout=conf.layout, mask=conf.mask)
        try:
            plans[(conf.layout, conf.mask)] = choose_plan(cfg.run.plan, conf.mask, layout.position_mode, device,
                                                          conf.layout)
        except UsageError as e:
            refusals.append(e)
            plans[(conf.layout, conf.mask)] = choose_plan("auto", conf.mask, layout.position_mode, device,
                                                          conf.layout)
    if refusals and len(refusals) == len(plans):
        raise refusals[0]
    if refusals:
        others = ", ".join(f"{lay} {mask}: {plan}" for (lay, mask), plan in plans.items() if plan != cfg.run.plan)
        _say(cfg, f"--plan {cfg.run.plan} does not apply to every configuration; the others run the automatic "
                  f"choice ({others})")
    return plans


def _prepare(out: Path, overwrite: bool) -> None:
    found = [f for f in COMPARE_FILES if (out / f).exists()] + (["runs/"] if (out / "runs").exists() else [])
    if found and not overwrite:
        raise UsageError(f"--out {out} already holds a comparison ({', '.join(found)})",
                         "choose another --out, or pass --overwrite to replace it")
    prepare_out_dir(out, overwrite=True)


def _jsonable(cfg: CompareConfig) -> dict:
    d = asdict(cfg)
    d["models"] = [list(m) for m in cfg.models]
    return d


def _say(cfg: CompareConfig, message: str) -> None:
    if not cfg.run.quiet:
        print(message, file=sys.stderr, flush=True)
