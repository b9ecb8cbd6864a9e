"""`lossgap compare`: score several models on exactly the same documents and tokens, then analyse and report."""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from ..analysis.textclass import write_vocab_tables
from ..config import CompareConfig, ModelConfig, ScoreConfig, TokenizeConfig
from ..data.corpus import Corpus, require_documents
from ..data.encode import resolve_special_tokens
from ..engine.allocator import release_memory
from ..engine.devices import resolve_device
from ..engine.dist import init_distributed
from ..engine.model import load_model, load_tokenizer, resolve_seq_len
from ..engine.plans import choose_plan
from ..errors import UsageError
from ..formats.files import refuse_links, write_json
from ..formats.paths import ComparisonFolder
from ..formats.schema import SCHEMA_VERSION, TOKENS, Manifest
from ..matrix import SEED_MATRIX, Configuration, main_configuration, single_configuration
from ..version import library_versions
from .explanation_plan import ExplanationPlan, ExplanationRecord, plan_explanation
from .layers import LayerSettings, layer_attribution
from .lock import OutLocks
from .paired import paired_pass
from .scoring import score_offsets
from .store import prepare_out_dir
from .temperature import fit_pair_temperatures


def configurations(cfg: CompareConfig) -> tuple[Configuration, ...]:
    """The configurations a comparison scores: the seed's six, or the one --layout/--mask/--label-offset give."""
    if cfg.matrix == "seed":
        return SEED_MATRIX
    return (single_configuration(cfg.layout.label_offset, cfg.layout.layout, cfg.layout.mask),)


def compare(cfg: CompareConfig, min_models: int = 2) -> dict:
    """Score every model under every configuration, then write results.json and the report; return the results.

    min_models=1 analyses one model alone (label offsets, masks, leakage), as `lossgap demo --smollm` does."""
    started = time.perf_counter()
    cfg.validate(min_models)
    folder = ComparisonFolder(Path(cfg.run.out))
    with OutLocks([folder.root] if init_distributed(cfg.model.device).main else []):
        return _compare(cfg, folder, min_models, started)


def _compare(cfg: CompareConfig, folder: ComparisonFolder, min_models: int, started: float) -> dict:
    from ..analysis.results import build_results
    from ..report.build import write_report

    _prepare(folder, cfg.run.overwrite, cfg.run.resume)
    require_documents(Corpus(cfg.corpus))  # fail early on a missing, unreadable or empty corpus, before any model
    model_cfgs = {name: replace(cfg.model, name=spec) for name, spec in cfg.models}
    tokenizers = {name: load_tokenizer(m) for name, m in model_cfgs.items()}
    checks, mode = _check_tokenizers(cfg, tokenizers)
    configs = configurations(cfg)
    # decided before anything is scored: how every model's input is tokenized, and what the explanation computes
    tokenize = shared_tokenization(cfg, tokenizers[cfg.models[0][0]], mode)
    plan = plan_explanation(cfg, model_cfgs, tokenizers, mode, main_configuration(list(configs)))
    _say(cfg, f"comparing {', '.join(model_cfgs)} on {cfg.corpus.path}: {len(configs)} configurations, "
              f"{'token-level' if mode == TOKENS else 'bits per byte only (tokenizers differ)'}")
    runs = _Runs(cfg, configs, _plans_per_group(cfg, configs), folder, tokenizers, mode, tokenize)
    record = runs.score_all(model_cfgs, plan)
    if not init_distributed(cfg.model.device).main:
        return {}  # under torchrun, rank 0 analyses and reports
    record.vocab = write_vocab_tables(folder, tokenizers, runs.model_info)
    manifest: Manifest = {
        "schema_version": SCHEMA_VERSION,
        "baseline": cfg.models[0][0],
        "models": runs.model_info,
        "mode": mode,
        "tokenizers": checks,
        "configurations": [c.to_dict() for c in configs],
        "runs": runs.folders,
        "passes": runs.passes,
        "bootstrap": cfg.bootstrap,
        "seed": cfg.seed,
        "corpus": asdict(cfg.corpus),
        "config": _jsonable(cfg),
        "versions": library_versions(),
        "elapsed_seconds": time.perf_counter() - started,
    }
    if plan.enabled:
        manifest["explanation"] = plan.manifest(record)
    write_json(folder.manifest, manifest)
    results = build_results(folder.root)
    write_report(folder.root, results)
    return results


def shared_tokenization(cfg: CompareConfig, base_tokenizer, mode: str) -> TokenizeConfig:
    """How the configurations tokenize every model's input: the raw text (the chat-formatted runs add their template
    themselves) and, for a token-level comparison, the baseline's BOS/EOS ids for every model (an instruct EOS such
    as <|eot_id|> would be another target). Each model's run checks the ids against its own vocabulary."""
    tokenize = replace(cfg.tokenize, chat_context=False, chat_end_of_turn=False)
    if mode != TOKENS:
        return tokenize
    special = resolve_special_tokens(base_tokenizer, cfg.tokenize)
    return replace(tokenize, add_bos=special.bos_id is not None, add_eos=special.eos_id is not None,
                   bos_id=special.bos_id, eos_id=special.eos_id)


def _capped_texts(corpus: Corpus, max_tokens: int | None):
    """The texts the tokenizer check reads: all of them, or under --max-tokens at most 64 characters per allowed
    token (at least 1 MiB), so a capped run never tokenizes a huge document whole here either."""
    budget = None if max_tokens is None else max(1 << 20, 64 * max_tokens)
    for doc in corpus:
        if budget is None:
            yield doc.text
            continue
        if budget <= 0:
            return
        yield doc.text[:budget]
        budget -= len(doc.text)


def _check_tokenizers(cfg: CompareConfig, tokenizers: dict) -> tuple[dict, str]:
    """Each model's tokenizer against the baseline's on the corpus; "tokens" if all tokenize it identically, else
    the comparison is made in bits per byte."""
    from ..data.tokcheck import compare_tokenizers

    base_name = cfg.models[0][0]
    checks = {}
    for name in list(tokenizers)[1:]:
        selected = _capped_texts(Corpus(cfg.corpus), cfg.corpus.max_tokens)
        checks[name] = compare_tokenizers(tokenizers[base_name], tokenizers[name], selected, base_name, name)
    return checks, "tokens" if all(c["compatible"] for c in checks.values()) else "bits_per_byte"


class _Runs:
    """The scoring runs of a comparison, model by model: every configuration of one model while it is loaded; with
    the explanation, the baseline stays loaded for the paired pass with each other model."""

    def __init__(self, cfg: CompareConfig, configs, plans: dict, folder: ComparisonFolder, tokenizers: dict,
                 mode: str, tokenize: TokenizeConfig):
        self.cfg, self.configs, self.plans, self.folder, self.mode = cfg, configs, plans, folder, mode
        self.tokenize = tokenize
        self.total = len(configs) * len(tokenizers)
        self.step = 0
        self.seq_len = cfg.layout.seq_len
        self.base_tokenizer = tokenizers[cfg.models[0][0]]
        self.folders: dict[str, dict[str, str]] = {c.key: {} for c in configs}
        self.model_info: dict[str, dict] = {}
        self.passes: list[dict] = []  # each forward pass over the corpus: its models and what it wrote

    def score_all(self, model_cfgs: dict[str, ModelConfig], plan: ExplanationPlan) -> ExplanationRecord:
        """Every model under every configuration; the paired pass and the chat-formatted run where the plan says. The
        paired pass writes both models' runs of the main configuration's layout and mask as it goes (one forward pass
        per model for them); where it cannot, they are scored on their own."""
        (base_name, base_cfg), *others = model_cfgs.items()
        record = ExplanationRecord()
        main = next(c for c in self.configs if c.key == plan.configuration)
        main_group = next(g for g in _offset_groups(self.configs) if main in g)
        from_pass = set(plan.paired) | ({base_name} if plan.paired else set())  # whose main group the pass writes
        base = self.score_model(base_name, base_cfg, keep=bool(plan.paired),
                                but=main_group if base_name in from_pass else [])
        for name, mcfg in others:
            loaded = self.score_model(name, mcfg, keep=True, but=main_group if name in from_pass else [])
            if name in plan.paired:
                models = {"b": base_name, "o": name}
                runs = {role: [self._run_config(conf, m, model_cfgs[m]) for conf in main_group]
                        for role, m in models.items() if m in from_pass}
                self.step += sum(len(cs) for cs in runs.values())
                _say(self.cfg, f"[{self.step}/{self.total}] paired pass: {base_name} and {name} on {main.key}"
                               + "".join(f"; {models[r]}'s {', '.join(c.key for c in main_group)}" for r in runs))
                run = self._config(main, name, mcfg, self.folder.pairs_work(name))
                done = paired_pass(run, (base_name, name), base, loaded, self.base_tokenizer, self.folder, runs)
                record.pairs[name] = self.folder.relative(done.path)
                fitted = fit_pair_temperatures(run, done, (base_name, name), self.folder, self.cfg.seed)
                record.temperature[name] = self.folder.relative(fitted)  # on a sample, while both are loaded
                if name in plan.layers:
                    self.layers(record, run, (base_name, name), done)
                written = [models[r] for r in runs] if done.runs else []
                self.passes.append({"models": [base_name, name], "pairs": record.pairs[name],
                                    "configurations": [c.key for c in main_group] if written else [],
                                    "runs_of": written})
                from_pass -= set(written)
                if name in from_pass:  # the pass could not write its runs (models/plans differ): scored here
                    self.score_group(name, mcfg, loaded, main_group)
                    from_pass.discard(name)
            if plan.chat:
                runs = [self._chat_run(main, name, mcfg, loaded, turn, i)
                        for i, turn in enumerate(plan.chat_user_turns)]
                record.chat_runs[name], record.chat_runs_by_turn[name] = runs[0], runs
            del loaded
            release_memory()
        if base_name in from_pass:
            self.score_group(base_name, base_cfg, base, main_group)
        del base
        release_memory()
        return record

    def layers(self, record: ExplanationRecord, run: ScoreConfig, names: tuple[str, str], done) -> None:
        """--layers: the pair's layer attribution while both models are resident (run/layers.py)."""
        settings = LayerSettings(self.cfg.layers_tokens or None, self.cfg.layers_blocks, self.cfg.seed,
                                 self.cfg.layers_bisect)
        layer_attribution(run, names, done, self.folder, settings, quiet=self.cfg.run.quiet)
        record.layers[names[1]] = self.folder.relative(self.folder.layers(names[1]))
        self.passes.append({"models": list(names), "layers": record.layers[names[1]]})

    def score_model(self, name: str, mcfg: ModelConfig, keep: bool = False, but: list[Configuration] = ()):
        """Score every configuration with one model (`but` those); return the loaded model if `keep`, else release
        it."""
        cfg = self.cfg
        loaded = load_model(mcfg, quiet=cfg.run.quiet)
        self.seq_len = resolve_seq_len(loaded, self.seq_len)
        self.model_info[name] = {"spec": mcfg.name, **loaded.describe()}
        # the offsets of one layout and mask share their forward passes: one pass per batch serves all of them
        for group in _offset_groups(self.configs):
            if group != list(but):
                self.score_group(name, mcfg, loaded, group)
        if keep:
            return loaded
        del loaded
        release_memory()
        return None

    def score_group(self, name: str, mcfg: ModelConfig, loaded, group: list[Configuration]) -> None:
        """One model's configurations that differ only in label offset, from one forward pass per batch."""
        self.step += len(group)
        keys = " + ".join(f"{conf.key} ({conf.computes})" for conf in group)
        _say(self.cfg, f"[{self.step}/{self.total}] {name}: {keys}")
        score_offsets([self._run_config(conf, name, mcfg) for conf in group], loaded, self._tokenizer())
        self.passes.append({"models": [name], "configurations": [c.key for c in group]})

    def _run_config(self, conf: Configuration, name: str, mcfg: ModelConfig) -> ScoreConfig:
        """The configuration's run of one model, in runs/<configuration>/<model>/ (recorded in compare.json)."""
        files = self.folder.run(conf.key, name)
        self.folders[conf.key][name] = self.folder.relative(files)
        return self._config(conf, name, mcfg, files.folder)

    def _chat_run(self, main: Configuration, name: str, mcfg: ModelConfig, loaded, user_turn: str,
                  turn: int = 0) -> str:
        """The main configuration once more, each document as the model's reply in its own chat template after the
        user turn `user_turn` (number `turn` of those sampled); with --chat-end-of-turn each whole document ends with
        the template's end-of-turn token in place of the EOS (summary.json: chat_end_of_turn_id)."""
        files = self.folder.run(main.key, name, chat=True, turn=turn)
        end = self.cfg.tokenize.chat_end_of_turn
        _say(self.cfg, f"{name}: {main.key}, chat-formatted (documents as the assistant's reply to {user_turn!r}"
                       + (", ending with its end-of-turn token)" if end else ")"))
        run = self._config(main, name, mcfg, files.folder)
        run.tokenize = replace(run.tokenize, chat_context=True, chat_user_turn=user_turn, chat_end_of_turn=end)
        score_offsets([run], loaded, self._tokenizer())
        self.passes.append({"models": [name], "configurations": [main.key], "chat": True, "user_turn": user_turn})
        return self.folder.relative(files)

    def _tokenizer(self):
        """Token-level comparisons tokenize every model's input with the baseline's tokenizer."""
        return self.base_tokenizer if self.mode == TOKENS else None

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
            plans[(conf.layout, conf.mask)] = cfg.run.plan  # auto is resolved per model (engine/prepare.py)
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


def _prepare(folder: ComparisonFolder, overwrite: bool, resume: bool) -> None:
    """--resume continues an interrupted comparison in place (each run, and the paired pass, checks that its inputs
    are unchanged); otherwise a folder holding a comparison needs --overwrite. A folder that is or holds a symbolic
    link where lossgap writes is refused before anything is written or deleted."""
    refuse_links(folder.root, folder.owned())
    found = folder.existing()
    if found and not (overwrite or resume):
        raise UsageError(f"--out {folder.root} already holds a comparison ({', '.join(found)})",
                         "continue an interrupted one with --resume, choose another --out, or pass --overwrite to "
                         "replace it")
    prepare_out_dir(folder.root, overwrite=True)


def _jsonable(cfg: CompareConfig) -> dict:
    d = asdict(cfg)
    d["models"] = [list(m) for m in cfg.models]
    return d


def _say(cfg: CompareConfig, message: str) -> None:
    if not cfg.run.quiet:
        print(message, file=sys.stderr, flush=True)
