"""`lossgap compare`: score several models on exactly the same documents and tokens, then analyse and report."""

from __future__ import annotations

import copy
import gc
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from ..analysis.textclass import write_vocab_tables
from ..config import CompareConfig, ModelConfig, ScoreConfig
from ..data.corpus import Corpus, require_documents
from ..data.encode import chat_prefix, resolve_special_tokens
from ..engine.dist import init_distributed
from ..engine.memory import require_room_for_pair
from ..engine.model import load_model, load_tokenizer, resolve_device, resolve_seq_len
from ..engine.plans import choose_plan
from ..errors import UsageError
from ..formats.files import write_json
from ..formats.schema import SCHEMA_VERSION
from ..matrix import SEED_MATRIX, Configuration, main_configuration, single_configuration
from ..version import library_versions
from .paired import paired_pass, pairs_dir
from .scoring import score_offsets
from .store import prepare_out_dir

MANIFEST = "compare.json"
COMPARE_FILES = (MANIFEST, "results.json", "report.md", "report.html")


def run_dir(out: Path, config_key: str, model_name: str) -> Path:
    return out / "runs" / config_key / model_name


def configurations(cfg: CompareConfig) -> tuple[Configuration, ...]:
    """The configurations a comparison scores: the seed's six, or the one --layout/--mask/--label-offset give."""
    if cfg.matrix == "seed":
        return SEED_MATRIX
    return (single_configuration(cfg.layout.label_offset, cfg.layout.layout, cfg.layout.mask),)


def compare(cfg: CompareConfig, min_models: int = 2) -> dict:
    """Score every model under every configuration, then write results.json and the report; return the results.

    min_models=1 analyses one model alone (label offsets, masks, leakage), as `lossgap demo --smollm` does."""
    from ..analysis.results import build_results
    from ..report.build import write_report

    started = time.perf_counter()
    cfg.validate(min_models)
    out = Path(cfg.run.out)
    _prepare(out, cfg.run.overwrite)
    require_documents(Corpus(cfg.corpus))  # fail early on a missing, unreadable or empty corpus, before any model
    model_cfgs = {name: replace(cfg.model, name=spec) for name, spec in cfg.models}
    tokenizers = {name: load_tokenizer(m) for name, m in model_cfgs.items()}
    checks, mode = _check_tokenizers(cfg, tokenizers)
    configs = configurations(cfg)
    explanation = _plan_explanation(cfg, model_cfgs, tokenizers, mode, main_configuration(list(configs)))
    _say(cfg, f"comparing {', '.join(model_cfgs)} on {cfg.corpus.path}: {len(configs)} configurations, "
              f"{'token-level' if mode == 'tokens' else 'bits per byte only (tokenizers differ)'}")
    runs = _Runs(cfg, configs, _plans_per_group(cfg, configs), out, len(model_cfgs), tokenizers, mode)
    runs.score_all(model_cfgs, explanation)
    if not init_distributed(cfg.model.device).main:
        return {}  # under torchrun, rank 0 analyses and reports
    explanation["vocab"] = write_vocab_tables(out, tokenizers, runs.model_info)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "baseline": cfg.models[0][0],
        "models": runs.model_info,
        "mode": mode,
        "tokenizers": checks,
        "configurations": [c.to_dict() for c in configs],
        "runs": runs.folders,
        "bootstrap": cfg.bootstrap,
        "seed": cfg.seed,
        "corpus": asdict(cfg.corpus),
        "config": _jsonable(cfg),
        "versions": library_versions(),
        "elapsed_seconds": time.perf_counter() - started,
    }
    if explanation["enabled"]:
        manifest["explanation"] = explanation
    write_json(out / MANIFEST, manifest)
    results = build_results(out)
    write_report(out, results)
    return results


def _plan_explanation(cfg: CompareConfig, model_cfgs: dict, tokenizers: dict, mode: str, main: Configuration) -> dict:
    """What the explanation will compute, decided (and refused where it cannot be done) before any model loads: the
    paired pass needs identical tokenization, equal vocabulary sizes and room for two models; --chat-context needs
    each other model's chat template."""
    names = list(model_cfgs)
    plan = {"enabled": cfg.explain and len(names) > 1, "configuration": main.key, "pairs": {}, "skipped": {},
            "chat_runs": {}, "chat_user_turn": cfg.tokenize.chat_user_turn if cfg.tokenize.chat_context else None,
            "memory": None}
    if cfg.tokenize.chat_context:
        for name in names[1:]:
            chat_prefix(tokenizers[name], cfg.tokenize.chat_user_turn, name)  # refuses a model without a template
    if not plan["enabled"]:
        return plan
    reason = None
    if mode != "tokens":
        reason = ("the tokenizers differ on this corpus, so the two models' distributions are over different tokens: "
                  "KL, top-1 agreement and calibration against the baseline are undefined; the difference is "
                  "attributed by byte class in bits per byte")
    elif main.label_offset != 1:
        reason = "no next-token configuration was scored"
    else:
        plan["memory"] = require_room_for_pair(model_cfgs, names[0])
    plan["skipped"] = dict.fromkeys(names[1:], reason) if reason else {}
    return plan


def _check_tokenizers(cfg: CompareConfig, tokenizers: dict) -> tuple[dict, str]:
    """Each model's tokenizer against the baseline's on the corpus; "tokens" if all tokenize it identically, else
    the comparison is made in bits per byte."""
    from ..data.tokcheck import compare_tokenizers

    base_name = cfg.models[0][0]
    checks = {}
    for name in list(tokenizers)[1:]:
        selected = (d.text for d in Corpus(cfg.corpus))
        checks[name] = compare_tokenizers(tokenizers[base_name], tokenizers[name], selected, base_name, name)
    return checks, "tokens" if all(c["compatible"] for c in checks.values()) else "bits_per_byte"


class _Runs:
    """The scoring runs of a comparison, model by model: every configuration of one model while it is loaded; with
    the explanation, the baseline stays loaded for the paired pass with each other model."""

    def __init__(self, cfg: CompareConfig, configs, plans: dict, out: Path, n_models: int, tokenizers: dict,
                 mode: str):
        self.cfg, self.configs, self.plans, self.out, self.mode = cfg, configs, plans, out, mode
        self.total = len(configs) * n_models
        self.step = 0
        self.seq_len = cfg.layout.seq_len
        self.tokenize = replace(cfg.tokenize, chat_context=False)  # the configurations score the raw text
        self.base_tokenizer = tokenizers[cfg.models[0][0]]
        self.folders: dict[str, dict[str, str]] = {c.key: {} for c in configs}
        self.model_info: dict[str, dict] = {}

    def score_all(self, model_cfgs: dict[str, ModelConfig], explanation: dict) -> None:
        """Every model under every configuration; the paired pass and the chat-formatted run where asked for."""
        (base_name, base_cfg), *others = model_cfgs.items()
        pairs = explanation["enabled"] and not explanation["skipped"]
        main = next(c for c in self.configs if c.key == explanation["configuration"])
        base = self.score_model(base_name, base_cfg, keep=pairs)
        for name, mcfg in others:
            loaded = self.score_model(name, mcfg, keep=True)
            if pairs and base.vocab_size != loaded.vocab_size:
                explanation["skipped"][name] = (f"the output vocabularies differ in size ({base.vocab_size} vs "
                                                f"{loaded.vocab_size}): the distributions cannot be compared entry by "
                                                "entry")
            elif pairs:
                _say(self.cfg, f"paired pass: {base_name} and {name} on {main.key}")
                run = self._config(main, name, mcfg, pairs_dir(self.out, name))
                done = paired_pass(run, (base_name, name), base, loaded, self.base_tokenizer, self.out)
                explanation["pairs"][name] = str(done.path.relative_to(self.out))
            if self.cfg.tokenize.chat_context:
                explanation["chat_runs"][name] = self._chat_run(main, name, mcfg, loaded)
            del loaded
            gc.collect()
        del base
        gc.collect()

    def score_model(self, name: str, mcfg: ModelConfig, keep: bool = False):
        """Score every configuration with one model; return the loaded model if `keep`, else release it."""
        cfg = self.cfg
        loaded = load_model(mcfg, quiet=cfg.run.quiet)
        self.seq_len = resolve_seq_len(loaded, self.seq_len)
        if self.mode == "tokens" and name == cfg.models[0][0]:
            special = resolve_special_tokens(self.base_tokenizer, cfg.tokenize, loaded.vocab_size)
            # every model gets the baseline's BOS/EOS ids: an instruct EOS such as <|eot_id|> is another target
            self.tokenize = replace(self.tokenize, add_bos=special.bos_id is not None,
                                    add_eos=special.eos_id is not None, bos_id=special.bos_id, eos_id=special.eos_id)
        self.model_info[name] = {"spec": mcfg.name, **loaded.describe()}
        # the offsets of one layout and mask share their forward passes: one pass per batch serves all of them
        for group in _offset_groups(self.configs):
            self.step += len(group)
            keys = " + ".join(f"{conf.key} ({conf.computes})" for conf in group)
            _say(cfg, f"[{self.step}/{self.total}] {name}: {keys}")
            run_cfgs = []
            for conf in group:
                folder = run_dir(self.out, conf.key, name)
                self.folders[conf.key][name] = str(folder.relative_to(self.out))
                run_cfgs.append(self._config(conf, name, mcfg, folder))
            score_offsets(run_cfgs, loaded, self._tokenizer())
        if keep:
            return loaded
        del loaded
        gc.collect()
        return None

    def _chat_run(self, main: Configuration, name: str, mcfg: ModelConfig, loaded) -> str:
        """The main configuration once more, each document as the model's reply in its own chat template."""
        folder = run_dir(self.out, f"{main.key}-chat", name)
        _say(self.cfg, f"{name}: {main.key}, chat-formatted (documents as the assistant's reply)")
        run = self._config(main, name, mcfg, folder)
        run.tokenize = replace(run.tokenize, chat_context=True, chat_user_turn=self.cfg.tokenize.chat_user_turn)
        score_offsets([run], loaded, self._tokenizer())
        return str(folder.relative_to(self.out))

    def _tokenizer(self):
        """Token-level comparisons tokenize every model's input with the baseline's tokenizer."""
        return self.base_tokenizer if self.mode == "tokens" else None

    def _config(self, conf: Configuration, name: str, mcfg: ModelConfig, folder: Path) -> ScoreConfig:
        cfg = self.cfg
        layout = replace(cfg.layout, layout=conf.layout, mask=conf.mask, label_offset=conf.label_offset,
                         seq_len=self.seq_len, stride=cfg.layout.stride if conf.layout == "single" else None)
        return ScoreConfig(model=mcfg, corpus=copy.deepcopy(cfg.corpus), tokenize=self.tokenize, layout=layout,
                           run=replace(cfg.run, out=str(folder), overwrite=True,
                                       plan=self.plans[(conf.layout, conf.mask)]))


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
            choose_plan(cfg.run.plan, conf.mask, layout.position_mode, device, conf.layout)
            plans[(conf.layout, conf.mask)] = cfg.run.plan  # auto is resolved per model (engine.py)
        except UsageError as e:
            refusals.append(e)
            plans[(conf.layout, conf.mask)] = "auto"
    if refusals and len(refusals) == len(plans):
        raise refusals[0]
    if refusals:
        others = ", ".join(f"{lay} {mask}" for (lay, mask), plan in plans.items() if plan != cfg.run.plan)
        _say(cfg, f"--plan {cfg.run.plan} does not apply to every configuration; the others ({others}) run the "
                  "automatic choice")
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
