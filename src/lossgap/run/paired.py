"""The paired pass: the baseline and another model scored on the same batches in one pass over the data, both models
resident, so every target token gets both predictive distributions compared (KL both ways, top-1 agreement) and each
model's statistics (NLL, entropy, the target's probability and rank, the argmax and its probability), computed in
one pass over the vocabulary tiles (docs/design.md, contract 8); the columns are declared in formats/columns.py.
Written per window as resumable shards, then merged in document order into pairs/<other>.parquet in the comparison
folder.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..analysis import precision
from ..config import ScoreConfig
from ..data.corpus import Corpus
from ..data.layout import Batch
from ..engine import forward
from ..engine.dist import init_distributed
from ..engine.model import LoadedModel
from ..engine.prepare import Engine, prepare_engine
from ..errors import UsageError
from ..formats.columns import (
    MODEL_METRICS,
    pair_columns,
    pair_run_columns,
    run_columns_in_pair,
    stored_names,
    token_schema,
)
from ..formats.files import atomic_path
from ..formats.paths import ComparisonFolder, RunFiles
from ..formats.schema import SCHEMA_VERSION
from .fingerprints import corpus_fingerprint, model_fingerprint
from .lock import OutLocks
from .runner import WindowRunner
from .scoring import Output, Pass, ScoreResult, finish, resume_config, run_output, run_windows, window_size, write_fault
from .shards import RUN_FIELD, ShardStore
from .store import DocumentSums, prepare_out_dir


class PairRunner(WindowRunner):
    """Scores a window with both models: the rows are batched by the baseline's plan and run through both, one forward
    pass of each serving every label offset asked for. At the pass's own offset (the main configuration's) the table
    holds the pair's statistics; at the others, each model's tokens.parquet statistics, for the runs the pass writes.
    Its float32 check measures the first paired batch's statistics of both models and the pair (forward.PAIR_CHECKED);
    each model's run takes its own NLL's part of it."""

    def __init__(self, base: Engine, other: Engine, names: tuple[str, str], k: int, fp32_check: bool = True):
        super().__init__(base.plan, base.head, base.loaded.name, fp32_check=False)
        self.other = other
        self.names = names
        self.k = k
        self.columns = pair_columns(*names)
        self.stored = stored_names(*names)
        self.dtypes = {"b": base.plan.dtype, "o": other.plan.dtype}
        self.want_fp32_check = fp32_check and any(d != torch.float32 for d in self.dtypes.values())

    def columns_for(self, k: int) -> tuple:
        return self.columns if k == self.k else pair_run_columns(*self.names)

    def forward(self, batches: list[Batch], offsets: list[int]) -> list[dict[str, np.ndarray]]:
        stats = forward.forward_pair_batches(self.plan, self.head, self.other.plan, self.other.head, batches,
                                             [k == self.k for k in offsets], MODEL_METRICS)
        return [{self.stored[role]: values for role, values in s.items()} for s in stats]

    @contextlib.contextmanager
    def attention(self) -> Iterator[None]:
        """Both plans' attention on their models while the windows are scored."""
        with self.plan.attention(), self.other.plan.attention():
            yield

    def require_finite(self, batch: Batch, columns: dict) -> None:
        for role, name, plan in zip(("nll_b", "nll_o"), self.names, (self.plan, self.other.plan), strict=True):
            forward.require_finite_loss(columns[self.stored[role]], batch, name, plan.dtype)

    def measure_fp32(self, todo: list[tuple[int, Batch, dict]]) -> dict:
        checks: dict = {}
        for k, batch, columns in todo:
            checks |= self._measure(k, batch, columns) or {}
        return checks

    def _measure(self, k: int, batch: Batch, columns: dict) -> dict | None:
        """At the pass's offset: the pair's check, and each model's from it, under (role, k); elsewhere each model's
        own, as its run alone checks it."""
        plans = {"b": (self.plan, self.head), "o": (self.other.plan, self.other.head)}
        reduced = [role for role, dtype in self.dtypes.items() if dtype != torch.float32]
        if k != self.k:
            checks = {(role, k): forward.fp32_deviation(*plans[role], batch, columns[self.stored[f"nll_{role}"]])
                      for role in reduced}
            return None if any(c is None for c in checks.values()) else checks
        stats = {role: columns[self.stored[role]] for role in forward.PAIR_CHECKED}
        pair = forward.fp32_pair_deviation(*plans["b"], *plans["o"], batch, stats)
        if pair is None:
            return None
        return {k: pair, **{(role, k): forward.run_check(pair, role, self.dtypes[role]) for role in reduced}}

    def fp32_warning(self, key, check: dict) -> str:
        if key == self.k:
            return f"the paired pass of {' and '.join(self.names)}: {precision.pair_check_text(check, self.names)}"
        role, k = key  # a model's run the pass writes warns as its own run would
        return f"{self.names[role == 'o']} (label offset {k}): {precision.run_check_text(check)}"


@dataclass
class PairedResult:
    path: Path
    facts: dict
    runs: list[ScoreResult] = field(default_factory=list)  # the runs the pass wrote (empty: none asked, or refused)
    engines: list[Engine] = field(default_factory=list, repr=False)  # both models as the pass scored them
    corpus: Corpus | None = field(default=None, repr=False)


def paired_pass(cfg: ScoreConfig, names: tuple[str, str], base: LoadedModel, other: LoadedModel, tokenizer,
                folder: ComparisonFolder, runs: dict[str, list[ScoreConfig]] | None = None) -> PairedResult:
    """Score cfg's configuration (one label offset) with both models on the same batches; write the comparison
    folder's pairs/<other>.parquet (rank 0) and return its path and the run's facts.

    `runs` ("b", "o" -> run configurations of that model, each cfg's layout and mask at cfg's offset or a larger
    one) are written from the same forward passes, with the files a separate run of them writes, so that a
    comparison runs one forward pass per model for its main configuration. They are not written (result.runs empty;
    the caller scores them) when the two models' plans or windows differ, as a separate run's would."""
    cfg.validate()
    if cfg.run.compile:
        raise UsageError("the paired pass does not compile its models", "drop --compile, or use --no-explain")
    started = time.perf_counter()
    dist = init_distributed(cfg.model.device)
    corpus = Corpus(cfg.corpus)
    engines = [prepare_engine(cfg, dist, loaded, tokenizer) for loaded in (base, other)]
    cfg.layout.seq_len = engines[0].seq_len
    size = min(e.plan.batch_size for e in engines)  # the same batches for both: the smaller measured size
    for e in engines:
        e.plan.batch_size = size
    runs = _writable(cfg, engines, runs or {})
    special_ids = control_token_ids([tokenizer or base.tokenizer, other.tokenizer], engines[0].head.vocab)
    for e in engines:
        e.head.set_special_ids(special_ids)
    work = folder.pairs_work(names[1])
    with OutLocks([c.out_dir for cs in runs.values() for c in cs] if dist.main else []):
        output = _open(cfg, engines, names, corpus, work, dist)
        run_outputs = _open_runs(runs, engines, corpus, output, dist)
        path = folder.pairs(names[1])
        facts = finished_pairs(path, output.shards.run) if cfg.run.resume else None
        pending = [o for os in run_outputs.values() for o in os if o.finished is None]
        if facts is not None and not pending:  # --resume: this pass had finished with the same inputs
            if dist.main:
                output.shards.remove()
            return PairedResult(path, facts, _finished(run_outputs), engines, corpus)
        runner = PairRunner(*engines, names, cfg.layout.label_offset, cfg.run.fp32_check)
        done = run_windows(cfg, engines[0], corpus, [output, *pending], dist, runner)
        facts = {**engines[0].facts(), "models": list(names), **done.facts(cfg, corpus, [output], 0.0),
                 "fp32_check": done.fp32_check.get(cfg.layout.label_offset), "special_ids": special_ids}
        written = []
        if dist.main and done.error is None:
            try:
                _merge(output, done, path, facts, runner.columns)
                written = _finish_runs(run_outputs, engines, done, corpus, started)
            except OSError as e:  # a full disk or a removed --out: the shards stay for --resume
                done.error = write_fault(e, work)
                if done.error is None:
                    raise
            else:
                shutil.rmtree(work, ignore_errors=True)
    if done.error is not None:
        raise done.error
    return PairedResult(path, facts, written, engines, corpus)


def control_token_ids(tokenizers: list, vocab: int) -> list[int]:
    """The special and added control tokens of either model's tokenizer (<|im_end|>, <|endoftext|>, <|eot_id|>, ...)
    inside the output vocabulary: the entries whose probability p_special sums."""
    ids: set[int] = set()
    for tok in tokenizers:
        ids.update(getattr(tok, "all_special_ids", []) or [])
        ids.update(i for i, added in (getattr(tok, "added_tokens_decoder", None) or {}).items()
                   if getattr(added, "special", False))
    return sorted(i for i in ids if isinstance(i, int) and 0 <= i < vocab)


def _writable(cfg: ScoreConfig, engines: list[Engine], runs: dict[str, list[ScoreConfig]]) -> dict:
    """The runs the pass can write as a separate run would: both models on the same plan, every run on the pass's
    windows, rows and layout (an offset at or after the pass's). {} otherwise."""
    if not runs or len({e.plan.name for e in engines}) > 1:
        return {}
    window = window_size(cfg, engines[0])
    for role, cfgs in runs.items():
        engine = engines[role == "o"]
        for c in cfgs:
            c.validate()
            c.layout.seq_len = engine.seq_len
            same = (c.layout.layout, c.layout.mask, c.layout.stride) == (cfg.layout.layout, cfg.layout.mask,
                                                                         cfg.layout.stride)
            if not same or c.layout.label_offset < cfg.layout.label_offset or window_size(c, engine) != window:
                return {}
    return runs


def _open_runs(runs: dict[str, list[ScoreConfig]], engines: list[Engine], corpus: Corpus, first: Output,
               dist) -> dict[str, list[Output]]:
    """Each run's output (run/scoring.py run_output), reading its columns from the pass's by model role."""
    if not runs:
        return {}
    if dist.main:
        for cs in runs.values():
            for c in cs:
                prepare_out_dir(c.out_dir, c.run.overwrite or c.run.resume)
    dist.barrier()
    corpus_print = corpus_fingerprint(corpus.files, str(corpus.path))
    outputs: dict[str, list[Output]] = {}
    names = tuple(first.metadata["models"])
    for role, cs in runs.items():
        engine = engines[role == "o"]
        for c in cs:
            o = run_output(c, engine, corpus_print, first.window_tokens, dist, first)
            o.renamed, o.check_key = run_columns_in_pair(*names, role), (role, o.k)
            outputs.setdefault(role, []).append(o)
    dist.barrier()
    return outputs


def _finish_runs(run_outputs: dict[str, list[Output]], engines: list[Engine], done: Pass, corpus: Corpus,
                 started: float) -> list[ScoreResult]:
    """Each run's files from its shards, with the facts its model's separate run records (run/scoring.py finish)."""
    results = []
    for role, outputs in run_outputs.items():
        engine = engines[role == "o"]
        facts = {**engine.facts(), **done.facts(outputs[0].cfg, corpus, outputs, engine.load_seconds)}
        for o in outputs:
            results.append(ScoreResult(o.cfg.out_dir, o.finished) if o.finished is not None
                           else finish(o, done, facts, started))
    return results


def _finished(run_outputs: dict[str, list[Output]]) -> list[ScoreResult]:
    return [ScoreResult(o.cfg.out_dir, o.finished) for outputs in run_outputs.values() for o in outputs]


def _open(cfg: ScoreConfig, engines: list[Engine], names: tuple[str, str], corpus: Corpus, work: Path,
          dist) -> Output:
    """The pass's shard store (resumable: its manifest names the configuration, corpus and both models)."""
    base = engines[0]
    window_tokens = window_size(cfg, base)
    metadata = {"models": {n: e.loaded.describe() for n, e in zip(names, engines, strict=True)},
                "config": cfg.to_dict(), "plan": base.plan.name, "schema_version": SCHEMA_VERSION,
                "special_tokens": {"bos_id": base.special.bos_id, "eos_id": base.special.eos_id}}
    manifest = {"config": resume_config(cfg, base.special),
                "corpus": corpus_fingerprint(corpus.files, str(corpus.path)),
                "model": [model_fingerprint(e.loaded.name, e.loaded.describe(), e.loaded.revision) for e in engines],
                "window_tokens": window_tokens}
    if dist.main:
        work.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    shards = ShardStore(RunFiles(work), manifest, cfg.run.resume, main=dist.main)
    dist.barrier()
    return Output(cfg, metadata, shards, DocumentSums(), window_tokens)


def _merge(output: Output, done: Pass, path: Path, facts: dict, columns) -> None:
    """The finished windows, in document order, into one Parquet file written under a temporary name."""
    meta = json.dumps({**output.metadata, "facts": facts, RUN_FIELD: output.shards.run}, default=str).encode()
    schema = token_schema(columns).with_metadata({b"lossgap": meta})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for window in range(done.n_windows):
            writer.write_table(output.shards.read(window))


def finished_pairs(path: Path, run: str) -> dict | None:
    """The facts of a finished paired pass at `path` whose inputs hash to `run`, or None."""
    try:
        meta = json.loads(pq.read_schema(path).metadata[b"lossgap"])
    except (OSError, KeyError, ValueError, TypeError, pa.ArrowException):
        return None
    return meta.get("facts") if isinstance(meta, dict) and meta.get(RUN_FIELD) == run else None
